"""What Vital holds for a user: ``GET /v2/user/providers/{user_id}``.

The one way to learn, after the fact, whether a connection arrived: each of the user's
connected providers is listed with its status (``connected``, or an error with details); an
unknown user answers 404.
"""

from __future__ import annotations

from urllib.parse import quote

from pydantic_core import ValidationError

from bulk_import.errors import VitalClientError, VitalProtocolError
from bulk_import.model import UserProvider, UserProviders
from bulk_import.vital.client import VitalClient

USER_PROVIDERS_PATH = "/v2/user/providers/"
LOOKUP_MAX_ATTEMPTS = 3
# What a lookup says of one connection (verification.csv's statuses).
CONNECTED, ERROR, MISSING = "connected", "error", "missing"
VERIFICATION_COLUMNS = ("line", "user_id", "provider", "status", "detail")


def user_providers(client: VitalClient, user_id: str) -> list[UserProvider] | None:
    """The user's providers, or None when Vital does not know the user (404).

    Transient failures are retried by the client's policy (a GET is safe to repeat); every
    other failure is a ``VitalError``, its message scrubbed of the API key, ``VitalNoTime``
    when too little Lambda time is left to start.
    """
    client.retry.check_time_to_start()  # VitalNoTime: too little Lambda time left to ask
    url = client.settings.base_url + USER_PROVIDERS_PATH + quote(user_id, safe="")
    call = client.retry.new_call(LOOKUP_MAX_ATTEMPTS)

    def get_once() -> list[UserProvider]:
        response = client.get(url, {}, call)
        try:
            return UserProviders.model_validate_json(response.content).providers
        except ValidationError:
            msg = "Vital's list of a user's providers is not in the documented shape"
            raise VitalProtocolError(msg, 200) from None

    try:
        return client.retry.run(call, get_once)
    except VitalClientError as exc:
        if exc.status == 404:
            return None
        raise


def connection_status(listed: list[UserProvider] | None, slug: str) -> tuple[str, str]:
    """What Vital's list says of the user's connection to ``slug``: ``connected``, ``error``
    (listed with another status) or ``missing``, and a detail. Vital's error details are not
    quoted: they may hold a token, and not always the row's own, to mask."""
    mine = next((p for p in listed or [] if p.slug == slug), None)
    if mine is None:
        return MISSING, ""
    if mine.status in (None, CONNECTED):
        return CONNECTED, ""
    return ERROR, f"Vital lists this connection as {mine.status}: see GET /v2/user/providers"
