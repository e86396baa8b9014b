"""Vital's bulk ops: listing them (``GET /v2/link/bulk_op``) and waiting for a run's to finish.

Bulk ops carry no id: a run's ops are those of its providers started since it began.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic_core import ValidationError

from bulk_import.errors import VitalError, VitalProtocolError
from bulk_import.model import BulkOp, BulkOpPage
from bulk_import.observability import logger
from bulk_import.vital.client import VitalClient

BULK_OP_MAX_ATTEMPTS = 3
BULK_OP_POLL_SECONDS = 2.0
BULK_OP_MAX_WAIT_SECONDS = 60.0
# A little slack for clock skew between Vital and Lambda, taken off a run's start.
BULK_OP_SKEW = timedelta(seconds=5)
BULK_OP_FAILED = frozenset({"failure", "aborted"})


def list_bulk_ops(
    client: VitalClient, page_size: int = 50, max_pages: int = 20, since: datetime | None = None
) -> list[BulkOp]:
    """Bulk ops as Vital lists them (newest first), bounded by ``max_pages``.

    With ``since``, paging stops at the first page that reaches ops started before it.
    Transient failures are retried (a GET is safe to repeat); every failure is a
    ``VitalError``.
    """
    ops: list[BulkOp] = []
    cursor: str | None = None
    for _ in range(max_pages):
        params: dict[str, Any] = {"page_size": max(1, min(page_size, 50))}
        if cursor:
            params["next_cursor"] = cursor
        page = _page(client, params)
        ops.extend(page.data)
        cursor = page.next_cursor
        if not cursor or (since is not None and _reaches_before(page.data, since)):
            break
    return ops


def wait_for_bulk_ops(
    client: VitalClient,
    providers: set[str],
    since: datetime,
    deadline: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_seconds: float = BULK_OP_POLL_SECONDS,
) -> list[BulkOp]:
    """The bulk ops of ``providers`` started at or after ``since``, once none is in progress.

    Polls every ``poll_seconds`` until then or until ``deadline`` (a ``clock()`` time), never
    sleeping past it; the ops returned may still be in progress when the deadline came first.
    A failed listing is logged and ends the wait with the ops of the last listing.
    """
    ops: list[BulkOp] = []
    while True:
        try:
            ops = [
                op
                for op in list_bulk_ops(client, since=since)
                if op.provider in providers
                and (started := parse_time(op.started_at)) is not None
                and started >= since
            ]
        except (VitalError, httpx.HTTPError) as exc:
            logger.warning("could not list bulk ops", extra={"error": type(exc).__name__})
            return ops
        left = deadline - clock()
        if all(op.status != "in_progress" for op in ops) or left <= 0:
            return ops
        sleep(min(poll_seconds, left))  # never past the deadline


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 time from Vital (``Z`` or an offset; naive means UTC), or None."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _page(client: VitalClient, params: dict[str, Any]) -> BulkOpPage:
    call = client.retry.new_call(BULK_OP_MAX_ATTEMPTS)

    def get_once() -> BulkOpPage:
        response = client.get(client.settings.bulk_op_url, params, call)
        try:
            return BulkOpPage.model_validate_json(response.content)
        except ValidationError:
            msg = "Vital's bulk op list is not in the documented shape"
            raise VitalProtocolError(msg, 200) from None

    return client.retry.run(call, get_once)


def _reaches_before(ops: list[BulkOp], since: datetime) -> bool:
    for op in ops:
        started = parse_time(op.started_at)
        if started is not None and started < since:
            return True
    return False
