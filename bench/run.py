"""`make bench`: floor, peer and ours side by side on the local stack; ratios against the targets.

    .venv/bin/python -m bench.run                      # 20k and 100k rows at 0 and 50 ms
    .venv/bin/python -m bench.run --quick              # smoke run: 2k rows, 0 ms, once
    .venv/bin/python -m bench.run --rows 20000,100000 --latency 0,0.05 --repeat 3

The stack (the Vital stand-in in this process, moto in a process of its own) starts once; every
contender runs in its own fresh interpreter (bench.child), so its import time, CPU time and peak
RSS are its own. After each
run the stand-in's record must show every row posted exactly once with a 200, or the run counts
as broken. Results go to bench/results/latest.json. Exit status: 0 whatever the targets say
(this is a report), 1 only when a contender broke.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import coldstart, resume
from bench.child import S3_LATENCY_ENV
from bench.data import ConnectionFile, generate
from bench.stack import BUCKET, BenchStack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYCACHE = RESULTS / "pycache"
# floor1 (the floor over one connection, as the issue words it) is context, not a target's bar.
CONTENDERS = ("floor", "floor1", "peer", "ours")
CHUNK_SIZE = 500
CONCURRENCY = 8
# Each contender runs once on this many rows before anything is measured: .pyc files written,
# lazily imported SDK modules compiled, the page cache warm. Not recorded.
WARMUP_ROWS = 1000
# Environment variables a child must not inherit: they would point it somewhere else.
_SCRUB_PREFIXES = ("AWS_", "POWERTOOLS_", "VITAL_", "BENCH_")
_SCRUB = {"CHUNK_SIZE", "MAX_CONCURRENCY", "IDEMPOTENCY_TABLE", "CONTINUATION_QUEUE_URL"}


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    measured: float | None
    limit: float
    unit: str = "x"
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "n/a"
        return "PASS" if self.measured <= self.limit else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": self.measured,
            "limit": self.limit,
            "unit": self.unit,
            "verdict": self.verdict,
            "note": self.note,
        }


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=None, help="comma-separated sizes (20000,100000)")
    parser.add_argument("--latency", default=None, help="seconds per request (0,0.05)")
    parser.add_argument(
        "--s3-latency",
        type=float,
        default=0.0,
        help="seconds added to every S3 request of a run (moto answers in ~1 ms; S3 in tens)",
    )
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--repeat", type=int, default=None, help="runs per cell; best wall kept")
    parser.add_argument("--coldstart-repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per child run")
    parser.add_argument("--quick", action="store_true", help="2k rows, 0 ms, once: a smoke run")
    parser.add_argument(
        "--no-resume", action="store_true", help="skip the resume cost (bench.resume, ~1 min)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    args.rows = [int(x) for x in _floats(args.rows or ("2000" if args.quick else "20000,100000"))]
    args.latency = _floats(args.latency or ("0" if args.quick else "0,0.05"))
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders: {sorted(unknown)}")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    args.repeat = max(1, min(args.repeat, 10))
    if args.quick:
        args.coldstart_repeats = min(args.coldstart_repeats, 2)
    return args


def child_env(stack: BenchStack) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES) and k not in _SCRUB
    }
    env.update(stack.child_env())
    env["CHUNK_SIZE"] = str(CHUNK_SIZE)
    env["MAX_CONCURRENCY"] = str(CONCURRENCY)
    # Bytecode: cached, in a directory of our own. With PYTHONDONTWRITEBYTECODE (set on this
    # machine) and no .pyc shipped for most packages, every child would compile httpx, pydantic,
    # Powertools and the SDK from source on every start, and call that its import time.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    return env


def _parent_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(
    spec: dict[str, Any], env: dict[str, str], timeout: float
) -> tuple[dict[str, Any] | None, str]:
    """(result, error): runs ``python -m bench.child`` and reads the JSON it wrote."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        out = Path(tmp) / "result.json"
        try:
            done = subprocess.run(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "bench.child", json.dumps(spec), str(out)],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:.0f} s"
        if done.returncode != 0 or not out.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-12:]
            return None, f"exit {done.returncode}: " + "\n".join(tail)
        return json.loads(out.read_text()), ""


def bound_seconds(chunks: int, latency: float) -> float:
    """The concurrency bound: chunks / concurrency * latency (no CPU at all)."""
    return chunks / CONCURRENCY * latency


@dataclass(frozen=True, slots=True)
class Workload:
    file: ConnectionFile
    key: str
    etag: str
    latency: float


def measure_once(
    stack: BenchStack, env: dict[str, str], work: Workload, contender: str, timeout: float
) -> dict[str, Any]:
    """One contender, one run, checked against the stand-in's record; ``{"error": ...}`` if not."""
    spec = {
        "contender": contender,
        "bucket": BUCKET,
        "key": work.key,
        "etag": work.etag,
        "size": len(work.file.data),
    }
    stack.prepare(work.latency, work.file.user_ids)
    cpu0 = _parent_cpu() + stack.moto.cpu_seconds()
    result, error = run_child(spec, env, timeout)
    stack_cpu = _parent_cpu() + stack.moto.cpu_seconds() - cpu0
    if result is None:
        return {"error": error}
    try:
        result.update(stack.verify(work.file.user_ids))
    except AssertionError as exc:
        return {"error": str(exc)}
    result.update(stack.post_times(result["started_at"]))
    result["stack_cpu_s"] = stack_cpu
    return result


def best_of(attempts: list[dict[str, Any]], rows: int) -> dict[str, Any]:
    broken = [a for a in attempts if "error" in a]
    if broken:
        return broken[0]
    best = min(attempts, key=lambda r: r["wall_s"])
    return {
        **best,
        "rows_per_s": rows / best["wall_s"],
        "wall_all_s": [r["wall_s"] for r in attempts],
        "cpu_all_s": [r["cpu_s"] for r in attempts],
        # Memory and import time: the worst and best seen, not tied to the fastest attempt.
        "peak_rss_mb": max(r["peak_rss_mb"] for r in attempts),
        "import_s": min(r["import_s"] for r in attempts),
    }


def measure_cells(
    stack: BenchStack,
    env: dict[str, str],
    work: Workload,
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    """Every contender on one workload, ``repeat`` rounds interleaved (floor, peer, ours, floor,
    ...) so a burst of load on the machine hits all of them alike; best wall time per contender.
    A contender that breaks is not run again."""
    attempts: dict[str, list[dict[str, Any]]] = {c: [] for c in args.contenders}
    for _ in range(args.repeat):
        for contender in args.contenders:
            if any("error" in a for a in attempts[contender]):
                continue
            attempts[contender].append(measure_once(stack, env, work, contender, args.timeout))
    return {c: best_of(a, work.file.rows) for c, a in attempts.items()}


def _last_line(text: str, width: int = 110) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "?").strip()[:width]


def _ms(latency: float) -> str:
    return f"{latency * 1000:g} ms"


def _get(runs: list[dict[str, Any]], latency: float, rows: int, contender: str) -> dict[str, Any]:
    for run in runs:
        if (run["latency_s"], run["rows"], run["contender"]) == (latency, rows, contender):
            return run
    return {}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def evaluate(
    runs: list[dict[str, Any]], cold: dict[str, Any] | None, args: argparse.Namespace
) -> tuple[list[Target], list[tuple[str, float | None]]]:
    big, small = max(args.rows), min(args.rows)
    slow = max(args.latency)
    has_zero = 0.0 in args.latency

    def wall(latency: float, rows: int, contender: str) -> float | None:
        return _get(runs, latency, rows, contender).get("wall_s")

    def cpu(latency: float, rows: int, contender: str) -> float | None:
        return _get(runs, latency, rows, contender).get("cpu_s")

    def peak(latency: float, rows: int) -> float | None:
        return _get(runs, latency, rows, "ours").get("peak_rss_mb")

    at = f"{big:,} rows"
    targets = [
        Target(
            f"CPU path (0 ms, {at}): ours / floor wall",
            _ratio(wall(0.0, big, "ours"), wall(0.0, big, "floor")) if has_zero else None,
            1.5,
        ),
        Target(
            f"Latency path ({_ms(slow)}, {at}): ours / peer wall",
            _ratio(wall(slow, big, "ours"), wall(slow, big, "peer")) if slow > 0 else None,
            0.15,
        ),
        Target(
            f"Latency path ({_ms(slow)}, {at}): ours / concurrency bound",
            _ratio(wall(slow, big, "ours"), runs_bound(runs, slow, big)) if slow > 0 else None,
            1.5,
        ),
    ]
    peaks = [p for p in (peak(lat, big) for lat in args.latency) if p is not None]
    targets.append(
        Target(
            f"Memory: ours peak RSS at {at} (worst latency)",
            max(peaks) if peaks else None,
            150.0,
            "MB",
        )
    )
    growths = [
        g
        for g in (_ratio(peak(lat, big), peak(lat, small)) for lat in args.latency)
        if g is not None
    ]
    targets.append(
        Target(
            f"Memory: ours peak RSS growth {small:,} → {big:,} rows (worst latency)",
            max(growths) if growths and big != small else None,
            1.3,
        )
    )
    targets.append(
        Target(
            "Cold start: import bulk_import.handler / boto3+httpx+BaseModel+Logger+Metrics",
            cold["ratio"] if cold else None,
            1.25,
            note=f"best of {cold['repeats'] if cold else 0} fresh interpreters each",
        )
    )
    info: list[tuple[str, float | None]] = [
        (
            f"ours / floor CPU time (0 ms, {at})",
            _ratio(cpu(0.0, big, "ours"), cpu(0.0, big, "floor")) if has_zero else None,
        ),
        (
            f"ours / floor1 wall (0 ms, {at}; the floor over one connection)",
            _ratio(wall(0.0, big, "ours"), wall(0.0, big, "floor1")) if has_zero else None,
        ),
        (
            f"ours / floor wall ({_ms(slow)}, {at})",
            _ratio(wall(slow, big, "ours"), wall(slow, big, "floor")) if slow > 0 else None,
        ),
        (
            f"floor / concurrency bound ({_ms(slow)}, {at})",
            _ratio(wall(slow, big, "floor"), runs_bound(runs, slow, big)) if slow > 0 else None,
        ),
        (
            f"ours / peer wall (0 ms, {at})",
            _ratio(wall(0.0, big, "ours"), wall(0.0, big, "peer")) if has_zero else None,
        ),
        (
            f"ours peak RSS / floor peak RSS ({at}, 0 ms)",
            _ratio(peak(0.0, big), _get(runs, 0.0, big, "floor").get("peak_rss_mb"))
            if has_zero
            else None,
        ),
    ]
    return targets, info


def runs_bound(runs: list[dict[str, Any]], latency: float, rows: int) -> float | None:
    for run in runs:
        if (run["latency_s"], run["rows"]) == (latency, rows):
            return run["bound_s"] or None
    return None


def print_report(
    runs: list[dict[str, Any]],
    cold: dict[str, Any] | None,
    targets: list[Target],
    info: list[tuple[str, float | None]],
) -> None:
    head = (
        f"{'latency':>7} {'rows':>8} {'chunks':>6} {'bound s':>7}  {'contender':<9} "
        f"{'wall s':>7} {'rows/s':>9} {'cpu s':>6} {'stack cpu s':>11} "
        f"{'peak MB':>8} {'import ms':>9} {'reqs':>5}"
    )
    print("\n" + head)
    print("-" * len(head))
    for run in runs:
        lead = (
            f"{_ms(run['latency_s']):>7} {run['rows']:>8,} {run['chunks']:>6} "
            f"{run['bound_s']:>7.2f}  {run['contender']:<9} "
        )
        if "error" in run:
            print(lead + "BROKEN: " + _last_line(run["error"], 80))
            continue
        print(
            lead + f"{run['wall_s']:>7.2f} {run['rows_per_s']:>9,.0f} {run['cpu_s']:>6.2f} "
            f"{run['stack_cpu_s']:>11.2f} {run['peak_rss_mb']:>8.1f} "
            f"{run['import_s'] * 1000:>9.0f} {run['requests']:>5}"
        )
    print(
        "\nwall: the contender's work after its imports; cpu: its own process; stack cpu: the "
        "moto server and the Vital stand-in during the run; bound: chunks / "
        f"{CONCURRENCY} * latency."
    )
    if cold:
        print(
            f"\ncold start (best of {cold['repeats']}): import bulk_import.handler "
            f"{cold['handler_s'] * 1000:.0f} ms vs boto3+httpx+BaseModel+Logger+Metrics "
            f"{cold['baseline_s'] * 1000:.0f} ms; modules beyond the baseline "
            f"{cold['extra_modules_self_ms_total']:.0f} ms self time, heaviest:"
        )
        for item in cold["extra_modules_top"][:8]:
            print(f"    {item['self_ms']:>7.1f} ms  {item['module']}")
        print(
            f"  the baseline without BaseModel (`import pydantic` is lazy): "
            f"{cold['baseline_no_basemodel_s'] * 1000:.0f} ms; the handler is "
            f"{cold['ratio_vs_no_basemodel']:.2f} x that"
        )
        print(
            f"  the baseline plus one pydantic model of one field: "
            f"{cold['baseline_one_model_s'] * 1000:.0f} ms ({cold['one_model_ratio']:.2f} x the "
            f"baseline); the handler is {cold['ratio_vs_one_model']:.2f} x that"
        )
        bare = cold["source_only"]
        print(
            f"  without any .pyc (compiled from source each start): handler "
            f"{bare['handler_s'] * 1000:.0f} ms vs baseline {bare['baseline_s'] * 1000:.0f} ms "
            f"(ratio {bare['ratio']:.2f})"
        )

    print(f"\n{'target':<76} {'measured':>9} {'limit':>8}  verdict")
    for t in targets:
        measured = "-" if t.measured is None else f"{t.measured:.2f}"
        limit = f"≤ {t.limit:g}{'' if t.unit == 'x' else ' ' + t.unit}"
        print(f"{t.name:<76} {measured:>9} {limit:>8}  {t.verdict}")
    print("\nfor context (no target):")
    for name, value in info:
        print(f"  {name:<74} {'-' if value is None else f'{value:.2f}':>9}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    print(
        f"bench: rows {args.rows}, latency {[_ms(x) for x in args.latency]}, "
        f"contenders {args.contenders}, best of {args.repeat}"
        + (f", S3 round trips +{_ms(args.s3_latency)}" if args.s3_latency else ""),
        flush=True,
    )
    files = {rows: generate(rows) for rows in sorted(set(args.rows))}
    for rows, file in files.items():
        print(
            f"  data {rows:,} rows: {len(file.data) / 1e6:.1f} MB, "
            f"{file.mean_row_bytes:.0f} B/row, {file.chunk_count(CHUNK_SIZE)} chunks"
        )
    runs: list[dict[str, Any]] = []
    env: dict[str, str] = {}
    with BenchStack() as stack:
        env = child_env(stack)
        if args.s3_latency:
            env[S3_LATENCY_ENV] = str(args.s3_latency)
        objects = {
            rows: stack.upload(f"connections-{rows}.jsonl", f.data) for rows, f in files.items()
        }
        print(f"  stack: moto {stack.moto.endpoint_url}, Vital stand-in {stack.vital.url}")
        warm = generate(WARMUP_ROWS, seed=1)
        warm_key, warm_etag = stack.upload("warmup.jsonl", warm.data)
        warm_work = Workload(warm, warm_key, warm_etag, 0.0)
        for contender in args.contenders:
            cell = measure_once(stack, env, warm_work, contender, args.timeout)
            if "error" in cell:
                print(f"  warm-up: {contender} BROKEN\n{cell['error']}")
                return 1
        print(f"  warm-up done ({WARMUP_ROWS:,} rows each)", flush=True)
        for latency in args.latency:
            for rows in args.rows:
                file = files[rows]
                chunks = file.chunk_count(CHUNK_SIZE)
                key, etag = objects[rows]
                cells = measure_cells(stack, env, Workload(file, key, etag, latency), args)
                for contender, cell in cells.items():
                    cell.update(
                        latency_s=latency,
                        rows=rows,
                        contender=contender,
                        chunks=chunks,
                        bound_s=bound_seconds(chunks, latency),
                    )
                    runs.append(cell)
                    shown = (
                        f"BROKEN {_last_line(cell['error'])}"
                        if "error" in cell
                        else f"{cell['wall_s']:.2f} s, {cell['peak_rss_mb']:.0f} MB"
                    )
                    print(f"  {_ms(latency):>6} {rows:>8,} {contender:<6} {shown}", flush=True)
    cold = None
    if "ours" in args.contenders:
        print("  cold start ...", flush=True)
        cold = coldstart.measure(env, args.coldstart_repeats)
    targets, info = evaluate(runs, cold, args)
    print_report(runs, cold, targets, info)
    resumed = None
    if not args.quick and not args.no_resume:
        print("\n  resume cost ...", flush=True)
        resumed = resume.measure()
        print(resume.report(resumed))
        targets.append(
            Target("Resume: entering gzip at 90 % / at 10 %", resumed["ratio"], resume.TARGET)
        )

    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {
            "rows": args.rows,
            "latency_s": args.latency,
            "s3_latency_s": args.s3_latency,
            "repeat": args.repeat,
            "chunk_size": CHUNK_SIZE,
            "max_concurrency": CONCURRENCY,
            "mean_row_bytes": {str(r): round(f.mean_row_bytes, 1) for r, f in files.items()},
        },
        "runs": runs,
        "coldstart": cold,
        "resume": resumed,
        "targets": [t.as_dict() for t in targets],
        "context": dict(info),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(
        f"\nwrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out} "
        f"in {report['elapsed_s']:.0f} s"
    )
    broken = [r for r in runs if "error" in r]
    for run in broken:
        print(f"\nBROKEN {run['contender']} at {_ms(run['latency_s'])}, {run['rows']:,} rows:")
        print(run["error"])
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
