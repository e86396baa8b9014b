"""One contender in its own fresh process: ``python -m bench.child SPEC_JSON RESULT_PATH``.

Times the contender's imports (its cold start), runs it once, and writes wall time, CPU time and
peak RSS as JSON to RESULT_PATH. Imports nothing heavy before the timed import, so the figures
belong to the contender alone.

Peak RSS is ``VmHWM`` from /proc/self/status: the high-water mark of this process's own address
space. ``getrusage(RUSAGE_SELF).ru_maxrss`` would be wrong here: Linux carries the parent's
high-water mark into the child across fork + exec, and the parent (moto, the stand-in and the
generated files) is bigger than any contender, so every child would report the parent's size.
``ru_maxrss`` is the fallback where /proc is missing.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _status_mb(field: str) -> float | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    return None


def _peak_rss_mb() -> float:
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mb() -> float:
    rss = _status_mb("VmRSS")
    return rss if rss is not None else _peak_rss_mb()


class _GcClock:
    """Time the cyclic garbage collector spends during the run (all generations)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1


# Seconds each S3 request of the run waits before it is sent (``bench.run --s3-latency``).
S3_LATENCY_ENV = "BENCH_S3_LATENCY_S"


def _add_s3_latency(seconds: float) -> None:
    """Every S3 request waits ``seconds`` first, as a round trip to S3 would: moto on loopback
    answers small requests in about a millisecond. Registered on boto3's default session, which
    every contender's S3 client comes from; the thread sleeps without the GIL, as it would
    waiting on the network."""
    import boto3  # noqa: PLC0415 - after the contender's timed import

    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None

    def wait(**_: Any) -> None:
        time.sleep(seconds)

    boto3.DEFAULT_SESSION.events.register("before-send.s3", wait)


def main() -> None:
    spec: dict[str, Any] = json.loads(sys.argv[1])
    out = Path(sys.argv[2])
    rss_start = _rss_mb()
    started = time.perf_counter()
    module = importlib.import_module(f"bench.contenders.{spec['contender']}")
    import_s = time.perf_counter() - started
    rss_imported = _rss_mb()
    if s3_latency := float(os.environ.get(S3_LATENCY_ENV) or 0):
        _add_s3_latency(s3_latency)

    profiler: Any = None
    if spec.get("profile"):
        from pyinstrument import Profiler  # noqa: PLC0415 - only when profiling

        profiler = Profiler(interval=0.001)
        profiler.start()
    gc_clock = _GcClock()
    gc.callbacks.append(gc_clock)
    cpu0, wall0, started_at = _cpu(), time.perf_counter(), time.time()
    info = module.run(spec)
    wall = time.perf_counter() - wall0
    cpu = _cpu() - cpu0
    gc.callbacks.remove(gc_clock)
    if profiler is not None:
        profiler.stop()
        prefix = Path(spec["profile"])
        prefix.with_suffix(".html").write_text(profiler.output_html())
        prefix.with_suffix(".txt").write_text(
            profiler.output_text(unicode=True, color=False, show_all=False)
        )
        from bench.profiling import summarise  # noqa: PLC0415 - only when profiling

        summary = summarise(profiler.last_session)
        prefix.with_suffix(".top.json").write_text(json.dumps(summary, indent=1))

    result = {
        **info,
        "contender": spec["contender"],
        "import_s": import_s,
        "wall_s": wall,
        "started_at": started_at,  # epoch: lines the run up with the stand-in's timestamps
        "cpu_s": cpu,
        "gc_s": gc_clock.seconds,
        "gc_collections": gc_clock.collections,
        "rss_start_mb": rss_start,
        "rss_after_import_mb": rss_imported,
        "peak_rss_mb": _peak_rss_mb(),
    }
    out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
