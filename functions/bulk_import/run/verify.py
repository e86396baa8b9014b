"""The verification pass (``VERIFY_AFTER_IMPORT=true``): once a file is done, every imported or
enqueued row's user is looked up (``GET /v2/user/providers/{user_id}``) and the answer written
to ``results/<path>/verification.csv``: ``line,user_id,provider,status,detail``, status
``connected`` (the provider listed as connected), ``error`` (listed with another status; the
detail is Vital's, redacted) or ``missing`` (not listed: an enqueued import not done yet, or a
connection gone since).

One GET per user, ``MAX_CONCURRENCY`` at a time, within the finishing invocation's time: rows
it has no time for are counted ``unchecked`` in the manifest, not written.
"""

from __future__ import annotations

import codecs
import csv
import io
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import IO, TYPE_CHECKING, cast

import httpx

from bulk_import.errors import VitalError
from bulk_import.model import Verification
from bulk_import.observability import logger
from bulk_import.storage.keys import VERIFICATION_NAME
from bulk_import.storage.spool import neutralise
from bulk_import.vital.lookups import VERIFICATION_COLUMNS, connection_status, user_providers

if TYPE_CHECKING:
    from bulk_import.run.context import RunContext
    from bulk_import.run.dispatch import Dispatcher
    from bulk_import.vital import VitalClient

VERIFIED_OUTCOMES = frozenset({"imported", "enqueued"})
# Rows looked up between two checks of the time left.
BATCH = 64

type Row = tuple[str, str, str]  # line, user_id, provider


def verify(ctx: RunContext, dispatcher: Dispatcher, outcomes_key: str) -> Verification:
    """Look up the users of ``outcomes_key``'s imported and enqueued rows; write the answers."""
    bucket, s3 = ctx.source.bucket, ctx.wiring.s3
    body = cast("IO[bytes]", s3.get_object(Bucket=bucket, Key=outcomes_key)["Body"])
    rows = _rows_to_check(codecs.getreader("utf-8")(body))
    key = ctx.prefix + VERIFICATION_NAME
    counts = Verification(key=key)
    try:
        client = dispatcher.vital()
    except Exception as exc:  # noqa: BLE001 - the import is done: a failed check must not undo it
        logger.warning("verification skipped: no Vital client", extra={"error": type(exc).__name__})
        return Verification(unchecked=sum(1 for _ in rows))
    with tempfile.TemporaryFile() as out:
        out.write((",".join(VERIFICATION_COLUMNS) + "\n").encode())
        with ThreadPoolExecutor(ctx.settings.max_concurrency, "verify") as pool:
            while batch := list(islice(rows, BATCH)):
                if not dispatcher.time_left():
                    counts.unchecked += len(batch) + sum(1 for _ in rows)
                    break
                for (line, user, provider), answer in zip(
                    batch, pool.map(lambda r: _check(client, r), batch), strict=True
                ):
                    if answer is None:  # Vital could not be asked
                        counts.unchecked += 1
                        continue
                    status, detail = answer
                    setattr(counts, status, getattr(counts, status) + 1)
                    out.write(_csv_line(line, user, provider, status, detail))
        out.seek(0)
        s3.upload_fileobj(out, bucket, key, ExtraArgs={"ContentType": "text/csv"})
    logger.info("verification written", extra={"verification": counts.model_dump()})
    return counts


def _rows_to_check(text: Iterable[str]) -> Iterator[Row]:
    reader = csv.DictReader(text)
    for row in reader:
        if row["outcome"] in VERIFIED_OUTCOMES:
            yield row["line"], row["user_id"], row["provider"]


def _check(client: VitalClient, row: Row) -> tuple[str, str] | None:
    """(status, detail) of one row's connection as Vital lists it; None when Vital could not
    be asked (the row is counted ``unchecked``)."""
    _, user, provider = row
    try:
        listed = user_providers(client, user)
    except (VitalError, httpx.HTTPError) as exc:
        logger.warning("verification lookup failed", extra={"error": type(exc).__name__})
        return None
    return connection_status(listed, provider)


def _csv_line(line: str, user: str, provider: str, status: str, detail: str) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        [line, user, provider, status, neutralise(detail)]
    )
    return buffer.getvalue().encode()
