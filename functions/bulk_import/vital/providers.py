"""A user's provider connections: ``GET /v2/user/providers/{user_id}``.

How an import is checked afterwards: a connection that Vital took shows under its user with
status ``connected`` (or ``error``, with its details); an unknown user answers 404.
"""

from __future__ import annotations

from urllib.parse import quote

from pydantic_core import ValidationError

from bulk_import.errors import VitalClientError, VitalProtocolError
from bulk_import.model import UserProvider, UserProviders
from bulk_import.vital.client import VitalClient

USER_PROVIDERS_PATH = "/v2/user/providers/"
USER_PROVIDERS_MAX_ATTEMPTS = 3


def user_providers(client: VitalClient, user_id: str) -> list[UserProvider] | None:
    """The user's providers, or None when Vital does not know the user (404).

    Transient failures are retried (a GET is safe to repeat); any other failure is a
    ``VitalError``.
    """
    call = client.retry.new_call(USER_PROVIDERS_MAX_ATTEMPTS)
    url = client.settings.base_url + USER_PROVIDERS_PATH + quote(user_id, safe="")

    def get_once() -> list[UserProvider]:
        response = client.get(url, {}, call)
        try:
            return UserProviders.model_validate_json(response.content).providers
        except ValidationError:
            msg = "Vital's user providers answer is not in the documented shape"
            raise VitalProtocolError(msg, 200) from None

    try:
        return client.retry.run(call, get_once)
    except VitalClientError as exc:
        if exc.status == 404:
            return None
        raise
