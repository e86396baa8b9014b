"""What the stand-in shares with Vital's API: paths, the API key header, the provider enum."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from bulk_import.model import PROVIDERS as IMPORTER_PROVIDERS
from bulk_import.model import provider_list

BULK_IMPORT_PATH = "/v2/link/bulk_import"
BULK_OP_PATH = "/v2/link/bulk_op"
USER_PROVIDERS_PATH = "/v2/user/providers/{user_id}"
API_KEY_HEADER = "x-vital-api-key"
DEFAULT_API_KEY = "sk_local_standin_key"
MIGRATION_DISABLED_DETAIL = (
    "Link Migration is not enabled for this team. Contact Vital support to enable it."
)

# The documented provider enum: one list, the importer's (DESIGN.md's "Providers").
PROVIDERS: tuple[str, ...] = tuple(sorted(IMPORTER_PROVIDERS))
# Vital's enum grows: the stand-in takes the slugs an operator adds to the importer's list too,
# read from the same variable on each request (tests set it while the stand-in runs).
EXTRA_PROVIDERS = "EXTRA_PROVIDERS"


def known_providers() -> frozenset[str]:
    return IMPORTER_PROVIDERS | provider_list(os.environ.get(EXTRA_PROVIDERS, ""))


def _enum_member(value: str) -> str:
    """The enum check, with the error FastAPI gives for a Literal that does not match."""
    known = sorted(known_providers())
    if value not in known:
        expected = ", ".join(repr(name) for name in known[:-1]) + f" or {known[-1]!r}"
        raise PydanticCustomError(
            "literal_error", "Input should be {expected}", {"expected": expected}
        )
    return value


Provider = Annotated[str, AfterValidator(_enum_member)]

BulkOpStatus = Literal["in_progress", "success", "failure", "aborted"]


def _is_bulk_import(method: str, path: str) -> bool:
    return method == "POST" and path == BULK_IMPORT_PATH
