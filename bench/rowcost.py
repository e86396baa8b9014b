"""`python -m bench.rowcost`: instructions per row of each step of the hot path, under callgrind.

    .venv/bin/python -m bench.rowcost                 # 20k rows (valgrind must be installed)
    .venv/bin/python -m bench.rowcost --rows 5000

Wall time on a shared machine swings by ±20 %; instruction counts do not. Each step runs in a
fresh interpreter under ``valgrind --tool=callgrind`` on the benchmark's rows (in memory: no
stack, no threads), and the count of a run that only builds the rows is taken off. Every step
includes the ones above it, as the intake does them for a block of well-formed JSONL rows
(``Rows.accept_all``): parse and validate, serialise the recipes, the dedupe claims
(``Dedupe.claim_all``: each user id's 16 bytes, one dict lookup), then the chunker
(``Chunker.add_all``) and the request bodies. The floor's per-row work is ``from_json`` plus its
share of a per-chunk ``to_json``.

Last, a whole run: ``Run`` with its collaborators faked at the wiring seam (``tests/fakes.py``:
S3 in memory, every chunk answered at once on the posting threads, ``MAX_CONCURRENCY`` 8), at
the given rows and twice as many; the difference per row leaves out what a run costs once.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("setup", "from_json", "validate", "serialise", "dedupe", "chunk")
RUN = "run"
TIMEOUT_S = 900


def _whole_run(rows: int) -> None:
    """One offline import of the benchmark's rows, through ``Run`` and its posting threads."""
    from bench.data import generate  # noqa: PLC0415 - in the measured interpreter
    from bulk_import.config import Settings  # noqa: PLC0415
    from bulk_import.model import ObjectRef  # noqa: PLC0415
    from tests.fakes import FakePost, FakeS3, StoreState, run_offline  # noqa: PLC0415

    s3 = FakeS3()
    s3.put("incoming/bench.jsonl", generate(rows).data)
    settings = Settings.from_env({"VITAL_API_KEY_SECRET": "k", "MAX_CONCURRENCY": "8"})
    ref = ObjectRef(bucket="bench", key="incoming/bench.jsonl", sequencer="0A")
    result = run_offline(s3, StoreState(), settings, ref, post_chunk=FakePost())
    if result.manifest is None or result.manifest.error is not None:
        raise RuntimeError(f"the offline run did not finish: {result.manifest}")


def _run_step(step: str, rows: int) -> None:
    """The step itself, in this (callgrind's) interpreter."""
    sys.path.insert(0, str(ROOT / "functions"))
    if step == RUN:
        _whole_run(rows)
        return
    from pydantic_core import from_json, to_json  # noqa: PLC0415 - in the measured interpreter

    from bench.data import generate  # noqa: PLC0415
    from bulk_import.ingest import (  # noqa: PLC0415
        Chunker,
        Dedupe,
        PendingRow,
        validate_well_formed,
    )
    from bulk_import.ingest.jsonl import JSONL_BLOCK_BYTES  # noqa: PLC0415

    data = generate(rows).data
    lines: list[bytes | None] = [line for line in data.split(b"\n") if line]
    block_lines = max(1, JSONL_BLOCK_BYTES * len(lines) // len(data))  # rows in a JSONL block
    if step == "from_json":
        for raw in lines:
            from_json(raw or b"")
    elif step != "setup":
        chunker = Chunker(500, 4_000_000)
        seen = Dedupe()
        # As the intake takes a 64 KiB block (``Rows.accept_all``): one validation call, then
        # each step one call (or one comprehension) for the block's well-formed rows.
        for start in range(0, len(lines), block_lines):
            validated = validate_well_formed(lines[start : start + block_lines])
            if step == "validate":
                continue
            numbers = [start + i + 1 for i, row in enumerate(validated) if row is not None]
            kept = [row for row in validated if row is not None]
            providers = [row.pop("provider", None) or "" for row in kept]
            payloads = list(map(to_json, kept))
            if step == "serialise":
                continue
            user_ids = [row["user_id"] for row in kept]
            seen.claim_all(providers, user_ids, numbers)
            if step == "dedupe":
                continue
            pending = list(map(PendingRow._make, zip(numbers, user_ids, payloads, strict=True)))
            for chunk in chunker.add_all(providers, pending):
                chunk.body(True)


def _instructions(step: str, rows: int, valgrind: str) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-rowcost-") as tmp:
        done = subprocess.run(  # noqa: S603 - our interpreter and valgrind, fixed arguments
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/out",
                sys.executable,
                "-m",
                "bench.rowcost",
                "--step",
                step,
                "--rows",
                str(rows),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=True,
        )
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if found is None:
        raise RuntimeError("callgrind printed no instruction count:\n" + done.stderr[-2000:])
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rowcost", description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--step", choices=(*STEPS, RUN), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        _run_step(args.step, args.rows)
        return 0
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 1
    counts = {step: _instructions(step, args.rows, valgrind) for step in STEPS}
    base = counts["setup"]
    print(f"instructions per row, {args.rows:,} well-formed JSONL rows (callgrind):")
    previous = None
    for step in STEPS[1:]:
        per_row = (counts[step] - base) / args.rows
        added = "" if previous is None else f"  (+{per_row - previous:,.0f})"
        print(f"  {step:<10} {per_row:>9,.0f}{added}")
        previous = per_row if step != "from_json" else None
    whole = _instructions(RUN, 2 * args.rows, valgrind) - _instructions(RUN, args.rows, valgrind)
    print(f"  {'whole run':<10} {whole / args.rows:>9,.0f}  (Run with fakes, threads included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
