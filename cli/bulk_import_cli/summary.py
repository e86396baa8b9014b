"""A finished import's manifest, as the operator reads it: status, counts, where the files are,
and the exit code its status means."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from bulk_import_cli import console

if TYPE_CHECKING:
    from bulk_import.model import Manifest

EXIT_CODES = {
    "succeeded": console.OK,
    "validated": console.OK,
    "partial": console.ATTENTION,
    # a newer upload of the key took the import over: its manifest is the report
    "superseded": console.ATTENTION,
    "failed": console.FAILED,
}


def exit_code(manifest: Manifest) -> int:
    return EXIT_CODES.get(manifest.status, console.FAILED)


def show(manifest: Manifest, where: dict[str, str]) -> None:
    """The status, every count that is not 0 (rows always), and ``where`` (name → location)."""
    table = Table(show_header=False, title=f"{manifest.source.key.rsplit('/', 1)[-1]}")
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("status", manifest.status + (" (dry run)" if manifest.dry_run else ""))
    for name, value in manifest.counts.model_dump().items():
        if value or name == "rows":
            table.add_row(name, f"{value:,}")
    table.add_row("requests", f"{len(manifest.chunks):,}")
    if manifest.error is not None:
        table.add_row("error", console.clean(f"{manifest.error.type}: {manifest.error.message}"))
    for name, location in where.items():
        table.add_row(name, location)
    console.out().print(table)
