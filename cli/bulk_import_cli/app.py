"""The ``bulk-import`` command: its subcommands and options, each a thin call into a module
that does the work. No traceback ever reaches the operator: every failure is one line and an
exit code (``console``)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from bulk_import_cli import console

app = typer.Typer(
    name="bulk-import",
    help="Check, import and verify Vital (Junction) connection files from your laptop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

ProviderOption = Annotated[
    str | None,
    typer.Option(
        "--provider",
        help="Provider of rows without one (as S3 takes it from the key or object metadata).",
    ),
]


def guarded[**P](command: Callable[P, int]) -> Callable[P, None]:
    """Run a command: its exit code, or one line and exit 2 for anything it raised."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        with _package_logs_quiet():
            try:
                code = command(*args, **kwargs)
            except typer.Exit:
                raise
            except KeyboardInterrupt:
                console.fail("interrupted", console.INTERRUPTED)
            except Exception as exc:  # noqa: BLE001 - one line, never a traceback
                console.fail(_describe(exc))
        raise typer.Exit(code)

    return run


def _describe(exc: BaseException) -> str:
    from bulk_import.errors import BulkImportError  # noqa: PLC0415 - the package loads late

    if isinstance(exc, BulkImportError | ValueError | OSError):
        return str(exc) or type(exc).__name__
    return f"unexpected error ({type(exc).__name__})"


@contextlib.contextmanager
def _package_logs_quiet() -> Iterator[None]:
    """The function's JSON log lines are for CloudWatch: off here, unless BULK_IMPORT_DEBUG is
    set, and then on stderr (stdout carries the command's output)."""
    from bulk_import.observability import logger  # noqa: PLC0415

    level = logger.log_level
    debug = logging.StreamHandler(sys.stderr) if os.environ.get("BULK_IMPORT_DEBUG") else None
    handlers = [h for h in logger.handlers if h is not debug]
    levels = [h.level for h in handlers]
    for handler in handlers:
        handler.setLevel(logging.CRITICAL + 1)
    if debug is not None:
        debug.setFormatter(logger.registered_formatter)
        logger.addHandler(debug)
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        if debug is not None:
            logger.removeHandler(debug)  # type: ignore[attr-defined] # Powertools forwards it
        logger.setLevel(level)
        for handler, handler_level in zip(handlers, levels, strict=True):
            handler.setLevel(handler_level)


@app.callback()
def commands() -> None:
    """Check, import and verify Vital (Junction) connection files from your laptop."""


@app.command()
@guarded
def validate(
    file: Annotated[Path, typer.Argument(help="The connection file (JSONL, JSON, CSV; .gz/.zst).")],
    provider: ProviderOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead of tables.")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="Rejected lines to list (0: all).")
    ] = 20,
) -> int:
    """Check a file offline, exactly as the importer would read it; nothing is sent.

    Exit 0: every row valid; 1: rows rejected or duplicate; 2: the file cannot be read.
    """
    from bulk_import_cli.validate import validate as run_validate  # noqa: PLC0415

    return run_validate(file, provider, as_json, limit)


class Region(StrEnum):
    us = "us"
    eu = "eu"


class Environment(StrEnum):
    production = "production"
    sandbox = "sandbox"


ApiKeySecretOption = Annotated[
    str | None,
    typer.Option(
        "--api-key-secret",
        help="Secrets Manager secret holding the API key (default: the VITAL_API_KEY variable).",
    ),
]
RegionOption = Annotated[
    Region | None,
    typer.Option("--region", help="Junction's region (default: VITAL_API_BASE_URL, else us)."),
]
EnvironmentOption = Annotated[
    Environment | None,
    typer.Option("--environment", help="production or sandbox (default: production)."),
]


@app.command("run")
@guarded
def run_command(
    file: Annotated[Path, typer.Argument(help="The connection file (JSONL, JSON, CSV; .gz/.zst).")],
    out: Annotated[
        Path, typer.Option("--out", help="Directory for manifest.json, outcomes.csv, the state.")
    ],
    provider: ProviderOption = None,
    chunk_size: Annotated[
        int | None, typer.Option("--chunk-size", min=1, max=5000, help="Rows per request.")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, max=64, help="Requests in flight.")
    ] = None,
    api_key_secret: ApiKeySecretOption = None,
    region: RegionOption = None,
    environment: EnvironmentOption = None,
) -> int:
    """Import a file into Vital from here; results in --out as the Lambda writes them to S3.

    Ctrl-C stops cleanly; the same command again resumes. Exit 0: succeeded; 1: partial;
    2: failed; 130: stopped.
    """
    from bulk_import_cli.run import Access, run  # noqa: PLC0415

    tunables = {}
    if chunk_size is not None:
        tunables["CHUNK_SIZE"] = str(chunk_size)
    if concurrency is not None:
        tunables["MAX_CONCURRENCY"] = str(concurrency)
    access = Access(
        api_key_secret,
        region.value if region else None,
        environment.value if environment else None,
    )
    return run(file, out, provider, access, tunables)


@app.command()
@guarded
def verify(
    outcomes: Annotated[Path, typer.Argument(help="An outcomes.csv (from run, or from S3).")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the report (CSV).")],
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=64, help="Look-ups in flight.")
    ] = 4,
    api_key_secret: ApiKeySecretOption = None,
    region: RegionOption = None,
    environment: EnvironmentOption = None,
) -> int:
    """Check that imported connections are live: GET /v2/user/providers/{user_id} per user.

    Every imported, enqueued or errored row is written to --out as
    line,user_id,provider,status,detail (connected, error or missing). Exit 0: all connected;
    1: some error or missing; 2: the check could not run.
    """
    from bulk_import_cli.run import Access  # noqa: PLC0415
    from bulk_import_cli.verify import verify as run_verify  # noqa: PLC0415

    access = Access(
        api_key_secret,
        region.value if region else None,
        environment.value if environment else None,
    )
    return run_verify(outcomes, out, access, concurrency)


@app.command()
@guarded
def upload(
    file: Annotated[Path, typer.Argument(help="The connection file to upload.")],
    uri: Annotated[
        str, typer.Argument(help="s3://BUCKET/incoming/… (a prefix ending in / takes the name).")
    ],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Upload with metadata dry-run: true: validated, not sent."),
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="Show the import's progress until it finishes.")
    ] = False,
    provider: ProviderOption = None,
    poll_seconds: Annotated[
        float,
        typer.Option("--poll-seconds", min=0.1, help="How often --follow looks.", hidden=True),
    ] = 2.0,
) -> int:
    """Upload a file for the deployed function to import (under the bucket's own KMS key).

    With --follow, its progress until the manifest is written, then its summary; exit 0:
    succeeded or validated; 1: partial; 2: failed.
    """
    from bulk_import_cli.remote import upload as run_upload  # noqa: PLC0415

    return run_upload(
        file, uri, dry_run=dry_run, provider=provider, follow=follow, poll_seconds=poll_seconds
    )


@app.command()
@guarded
def status(
    uri: Annotated[str, typer.Argument(help="The uploaded object: s3://BUCKET/incoming/…")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the state as JSON.")] = False,
) -> int:
    """Where an import in S3 stands: status, rows done, requests, counts, last error.

    Read from the manifest (finished) or the checkpoint (running). Exit 0: succeeded, validated,
    pending or running; 1: partial; 2: failed, or no such object or results.
    """
    from bulk_import_cli.remote import status as run_status  # noqa: PLC0415

    return run_status(uri, as_json)


def main(argv: list[str] | None = None) -> Any:
    """The console script's entry point."""
    return app(args=argv, prog_name="bulk-import")
