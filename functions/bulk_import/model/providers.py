"""The provider slugs Vital documents for Link bulk import: the one list every check reads.

Vital documents the list as non-exhaustive, and it grows: ``EXTRA_PROVIDERS`` (comma-separated
slugs, read by ``config.Settings``) adds slugs to it for a deployment, so that a new provider
needs no release. Every check takes the list a run knows, this one by default.
"""

from __future__ import annotations

import re

# Documented as non-exhaustive; the official SDK adds runkeeper.
PROVIDERS: frozenset[str] = frozenset(
    {
        "oura",
        "fitbit",
        "garmin",
        "strava",
        "wahoo",
        "ihealth",
        "withings",
        "google_fit",
        "dexcom_v3",
        "polar",
        "cronometer",
        "omron",
        "whoop_v2",
        "my_fitness_pal_v2",
        "ultrahuman",
        "runkeeper",
    }
)

# OAuth 1.0 providers: their tokens do not expire, so Vital takes the constant OAUTH1_EXPIRES_AT
# (2**31 - 1) as their `expires_at`, and `refresh_token` holds the token secret.
OAUTH1_PROVIDERS: frozenset[str] = frozenset({"garmin"})
OAUTH1_EXPIRES_AT = 2147483647

# A slug as Vital writes them: lower-case letters, digits and underscores.
_SLUG = re.compile(r"[a-z][a-z0-9_]{0,63}")


def provider_list(text: str) -> frozenset[str]:
    """Comma-separated slugs (any case; spaces and empty entries ignored), each a valid slug.

    The error gives the entry's position, not its text: it ends up in a configuration error,
    which quotes no value.
    """
    entries = [part.strip().lower() for part in text.split(",")]
    for position, entry in enumerate(entries, 1):
        if entry and not _SLUG.fullmatch(entry):
            raise ValueError(
                f"entry {position} is not a provider slug (lower-case letters, digits and _, "
                "starting with a letter)"
            )
    return frozenset(entry for entry in entries if entry)
