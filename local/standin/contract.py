"""What the stand-in shares with Vital's API: paths, the API key header, the provider enum."""

from __future__ import annotations

from typing import Literal, get_args

from bulk_import.model import PROVIDERS as IMPORTER_PROVIDERS

BULK_IMPORT_PATH = "/v2/link/bulk_import"
BULK_OP_PATH = "/v2/link/bulk_op"
USER_PROVIDERS_PATH = "/v2/user/providers/{user_id}"
API_KEY_HEADER = "x-vital-api-key"
DEFAULT_API_KEY = "sk_local_standin_key"
MIGRATION_DISABLED_DETAIL = (
    "Link Migration is not enabled for this team. Contact Vital support to enable it."
)

# The documented provider enum: one list, the importer's (DESIGN.md's "Providers").
Provider = Literal[tuple(sorted(IMPORTER_PROVIDERS))]  # type: ignore[valid-type]
PROVIDERS: tuple[str, ...] = get_args(Provider)

BulkOpStatus = Literal["in_progress", "success", "failure", "aborted"]


def _is_bulk_import(method: str, path: str) -> bool:
    return method == "POST" and path == BULK_IMPORT_PATH
