"""The provider slugs Vital documents for Link bulk import: the one list every check reads."""

from __future__ import annotations

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
