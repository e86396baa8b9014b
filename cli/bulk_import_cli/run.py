"""``bulk-import run``: import a local file into Vital from the laptop, with the Lambda's run.

Results land in ``--out`` as they would under ``results/<path>/`` (``manifest.json``,
``outcomes.csv``, and ``retry.jsonl`` when rows need another go), with the run's checkpoint
under ``--out/_state/``. Ctrl-C stops cleanly (nothing more is sent, the requests in flight are
answered, the checkpoint is stored); the same command again resumes from it and sends no
chunk twice. A second Ctrl-C stops at once: the chunks then in flight are in doubt, and the
resume asks Vital what it holds of them, as the function does after a crash.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bulk_import.storage import aws
from bulk_import.storage.keys import MANIFEST_NAME, OUTCOMES_NAME, RETRY_NAME, STATE_DIR
from bulk_import_cli import console, summary
from bulk_import_cli.local_import import (
    API_KEY_VARIABLE,
    LocalImport,
    LocalImportError,
    StaticKey,
    settings_for,
)
from bulk_import_cli.progress import Display

if TYPE_CHECKING:
    from collections.abc import Callable

    from bulk_import.config import Settings

# How often the watching thread looks at the run, in seconds.
WATCH_SECONDS = 0.25


class Access:
    """Where the API key and the Vital host come from: the options, then the environment."""

    def __init__(
        self,
        api_key_secret: str | None,
        region: str | None,
        environment: str | None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.api_key_secret = api_key_secret
        self.region = region
        self.environment = environment
        self.environ = dict(os.environ if environ is None else environ)

    def settings(self, overrides: dict[str, str]) -> Settings:
        env = dict(self.environ)
        if self.region or self.environment:
            # Chosen on the command line: over a VITAL_API_BASE_URL in the environment.
            env.pop("VITAL_API_BASE_URL", None)
            if self.region:
                overrides["VITAL_REGION"] = self.region
            if self.environment:
                overrides["VITAL_ENVIRONMENT"] = self.environment
        if self.api_key_secret:
            overrides["VITAL_API_KEY_SECRET"] = self.api_key_secret
        else:
            env.pop("VITAL_API_KEY_SECRET", None)
        return settings_for(overrides, env)

    def secrets(self) -> Callable[[], Any]:
        """The API key's source for the run, read once here (a missing key or secret stops the
        command before anything starts) and masked in everything printed from then on."""
        if self.api_key_secret:
            key = aws.vital_api_key(self.api_key_secret, 0, aws.secrets_provider())
        else:
            key = self.environ.get(API_KEY_VARIABLE, "").strip()
            if not key:
                console.fail(
                    f"no API key: set {API_KEY_VARIABLE}, or pass --api-key-secret NAME to read "
                    "it from Secrets Manager"
                )
        console.hold_secret(key)
        static = StaticKey(key)
        return lambda: static


def run(
    file: Path,
    out: Path,
    provider: str | None,
    access: Access,
    tunables: dict[str, str],
) -> int:
    """Import ``file`` into ``out``; the exit code."""
    if not file.is_file():
        console.fail(f"{file}: no such file")
    secrets = access.secrets()
    local = LocalImport(
        file, out, access.settings(dict(tunables)), provider=provider, secrets=secrets
    )
    try:
        resumed = local.ref().segment > 0
    except LocalImportError as exc:
        console.fail(str(exc))
    if resumed:
        console.info(f"resuming the import in {out} from its checkpoint")
    local.start()
    display = Display(tty=sys.stderr.isatty())
    interrupted = watch(local, display)
    display.close(local.snapshot())
    result = local.outcome()
    where = {
        "manifest": str(out / MANIFEST_NAME),
        "outcomes": str(out / OUTCOMES_NAME),
    }
    if (out / RETRY_NAME).is_file():
        where["retry rows"] = str(out / RETRY_NAME)
    if result.continuation is not None:
        console.info(
            f"stopped: the checkpoint is in {out}; run the same command again to resume "
            "(nothing already sent is sent again)"
        )
        return console.INTERRUPTED if interrupted else console.FAILED
    manifest = result.manifest or local.manifest()
    if manifest is None:
        console.fail(result.skipped or "the import ended without a manifest")
    if result.skipped:
        console.info(f"{out} holds a finished import of this file ({result.skipped})")
    _tidy(out)
    summary.show(manifest, where)
    return summary.exit_code(manifest)


def watch(local: LocalImport, display: Display) -> bool:
    """Show progress until the run ends. Ctrl-C asks it to stop cleanly (True is returned);
    a second Ctrl-C ends the process at once."""
    interrupted = False
    while True:
        try:
            while not local.wait(WATCH_SECONDS):
                display.update(local.snapshot())
            return interrupted
        except KeyboardInterrupt:
            if interrupted:
                display.note("stopped at once; the resume asks Vital about the chunks in flight")
                os._exit(console.INTERRUPTED)
            interrupted = True
            local.stop()
            display.note(
                "stopping: nothing more is sent; waiting for the requests in flight "
                "(Ctrl-C again to stop at once)"
            )


def _tidy(out: Path) -> None:
    """Remove the state directories a finished import left empty."""
    for directory in (out / STATE_DIR / "retry", out / STATE_DIR):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
