"""``bulk-import verify``: are the imported connections live?

Every row of an ``outcomes.csv`` that may have reached Vital (``imported``, ``enqueued``,
``errored``) is looked up with ``GET /v2/user/providers/{user_id}`` (one request per user,
``--concurrency`` at a time) and written to ``--out`` as ``line,user_id,provider,status,detail``:
``connected``, ``error`` (Vital lists the connection in error, or the look-up failed) or
``missing`` (no such connection, or Vital does not know the user).
"""

from __future__ import annotations

import csv
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from rich.table import Table

from bulk_import.errors import VitalAuthError, VitalError
from bulk_import.model import UserProviders
from bulk_import.storage import aws
from bulk_import.vital.client import VitalClient
from bulk_import.vital.lookups import (
    MISSING,
    VERIFICATION_COLUMNS,
    connection_status,
    user_providers,
)
from bulk_import_cli import console
from bulk_import_cli.local_import import NO_DEADLINE

if TYPE_CHECKING:
    import httpx

    from bulk_import.model import UserProvider
    from bulk_import_cli.run import Access

CHECKED_OUTCOMES = frozenset({"imported", "enqueued", "errored"})
STATUSES = ("connected", "error", "missing")


class Row(NamedTuple):
    line: str
    user_id: str
    provider: str


class Verdict(NamedTuple):
    status: str
    detail: str = ""


def rows_to_check(outcomes: Path) -> list[Row]:
    """The rows of ``outcomes.csv`` that may have reached Vital."""
    try:
        with outcomes.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            if not reader.fieldnames or not {"line", "user_id", "provider", "outcome"} <= set(
                reader.fieldnames
            ):
                console.fail(f"{outcomes}: not an outcomes.csv (line,user_id,provider,outcome)")
            return [
                Row(r["line"], r["user_id"], r["provider"])
                for r in reader
                if r["outcome"] in CHECKED_OUTCOMES and r["user_id"]
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        console.fail(f"{outcomes}: cannot be read ({type(exc).__name__})")


def verdict(row: Row, providers: list[UserProvider] | None) -> Verdict:
    """What Vital's answer says of one row's connection (the Lambda's own reading of it)."""
    if providers is None:
        return Verdict(MISSING, "Vital does not know this user")
    status, detail = connection_status(providers, row.provider)
    if status == MISSING:
        return Verdict(MISSING, f"the user has no {row.provider} connection")
    return Verdict(status, detail)


def verify(
    outcomes: Path,
    out: Path,
    access: Access,
    concurrency: int,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Check every row; write ``out``; print the summary; the exit code."""
    rows = rows_to_check(outcomes)
    secrets = access.secrets()
    settings = access.settings({"MAX_CONCURRENCY": str(concurrency)})
    key = aws.vital_api_key(settings.vital_api_key_secret, 0, secrets())
    # Built here, before the look-up threads: pydantic builds a deferred model on first use
    # without a lock, and two threads at it at once can find it half built (pydantic#13438).
    UserProviders.model_rebuild()
    verdicts: list[Verdict] = []
    with (
        VitalClient(settings, key, lambda: NO_DEADLINE, transport) as client,
        ThreadPoolExecutor(concurrency, thread_name_prefix="verify") as pool,
    ):
        lookups: dict[str, Future[list[UserProvider] | None]] = {}
        for row in rows:
            if row.user_id not in lookups:
                lookups[row.user_id] = pool.submit(user_providers, client, row.user_id)
        for row in rows:
            try:
                verdicts.append(verdict(row, lookups[row.user_id].result()))
            except VitalAuthError as exc:
                pool.shutdown(cancel_futures=True)
                console.fail(f"Vital refused the API key: {exc}")
            except VitalError as exc:
                verdicts.append(Verdict("error", console.clean(f"look-up failed: {exc}")))
    write(out, rows, verdicts)
    counts = Counter(v.status for v in verdicts)
    show(counts, len(rows), out)
    return console.OK if counts["connected"] == len(rows) else console.ATTENTION


def write(out: Path, rows: list[Row], verdicts: list[Verdict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(VERIFICATION_COLUMNS)
        for row, found in zip(rows, verdicts, strict=True):
            writer.writerow((row.line, row.user_id, row.provider, found.status, found.detail))


def show(counts: Counter[str], checked: int, out: Path) -> None:
    table = Table(show_header=False, title="connections checked")
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("checked", f"{checked:,}")
    for status in STATUSES:
        table.add_row(status, f"{counts[status]:,}")
    table.add_row("report", str(out))
    console.out().print(table)
