"""``bulk-import validate``: a dry run of the Lambda's own import on a local file, offline.

The run is the one an upload with ``dry-run: true`` gets (``LocalImport``, results in a
temporary directory, a transport that refuses every request): the same readers, validation,
dedupe and chunking, so a file that validates here imports alike. The rejection thresholds are
off, so every row of the file is judged.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from bulk_import.model import Counts, Manifest
from bulk_import.storage.keys import OUTCOMES_NAME
from bulk_import_cli import console
from bulk_import_cli.local_import import LocalImport, StaticKey, refuse_requests, settings_for

COUNT_NAMES = ("rows", "valid", "rejected", "duplicates")


def validate(file: Path, provider: str | None, as_json: bool, limit: int) -> int:
    """Validate ``file``; print the report; the exit code."""
    if not file.is_file():
        console.fail(f"{file}: no such file")
    settings = settings_for({"REJECTED_STOP_AFTER_ROWS": "0", "REJECTED_STOP_PERCENT": "100"})
    with tempfile.TemporaryDirectory(prefix="bulk-import-validate-") as tmp:
        out = Path(tmp)
        local = LocalImport(
            file,
            out,
            settings,
            provider=provider,
            dry_run=True,
            secrets=lambda: StaticKey("offline"),
            transport=httpx.MockTransport(refuse_requests),
        )
        result = local.execute()
        manifest = result.manifest
        if manifest is None:
            console.fail("the file was not read to its end")
        if manifest.status == "failed":
            message = manifest.error.message if manifest.error else "the file cannot be read"
            console.fail(f"{file.name}: {message}")
        document = report(file, manifest, first_rejected(out / OUTCOMES_NAME, limit))
    if as_json:
        console.print_json(document)
    else:
        show(document, limit)
    counts = document["counts"]
    return console.OK if counts["valid"] == counts["rows"] else console.ATTENTION


def report(file: Path, manifest: Manifest, rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``--json`` document: counts, per provider, and the first rejected lines."""
    return {
        "file": file.name,
        "counts": _counts(manifest.counts),
        "providers": {name: _counts(c) for name, c in manifest.providers.items()},
        "rejected": rejected,
    }


def _counts(counts: Counts) -> dict[str, int]:
    return {name: getattr(counts, name) for name in COUNT_NAMES}


def first_rejected(outcomes: Path, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` rejected lines (0: all), in file order, with their reasons."""
    found: list[dict[str, Any]] = []
    with outcomes.open(newline="", encoding="utf-8") as rows:
        for row in csv.DictReader(rows):
            if row["outcome"] != "rejected":
                continue
            found.append(
                {
                    "line": int(row["line"]),
                    "user_id": row["user_id"],
                    "provider": row["provider"],
                    "reason": row["detail"],
                }
            )
            if limit and len(found) >= limit:
                break
    return sorted(found, key=lambda r: int(r["line"]))


def show(document: dict[str, Any], limit: int) -> None:
    """The readable report: counts per provider, then the first rejected lines."""
    screen = console.out()
    table = Table(title=f"{document['file']}: rows per provider")
    table.add_column("provider")
    for name in COUNT_NAMES:
        table.add_column(name, justify="right")
    for name, counts in document["providers"].items():
        table.add_row(name, *(str(counts[c]) for c in COUNT_NAMES))
    table.add_row("total", *(str(document["counts"][c]) for c in COUNT_NAMES), style="bold")
    screen.print(table)
    rejected = document["rejected"]
    if rejected:
        lines = Table(title=f"first {len(rejected)} rejected lines" if limit else "rejected lines")
        for column in ("line", "provider", "user_id", "reason"):
            lines.add_column(column, overflow="fold")
        for row in rejected:
            lines.add_row(str(row["line"]), row["provider"], row["user_id"], row["reason"])
        screen.print(lines)
    counts = document["counts"]
    verdict = (
        "every row is valid"
        if counts["valid"] == counts["rows"]
        else f"{counts['rejected']} rejected, {counts['duplicates']} duplicate"
    )
    screen.print(f"{counts['valid']} of {counts['rows']} rows would be sent: {verdict}")
