"""`python -m bench.profile`: one contender (default ours) under pyinstrument, top of the profile.

    .venv/bin/python -m bench.profile                     # ours, 100k rows, 0 ms
    .venv/bin/python -m bench.profile --rows 20000 --contender floor --lines 60

Same stack and child process as `make bench`. pyinstrument samples the main thread: reading,
parsing, validation, chunking, serialisation and outcome writing happen there; the POSTs on the
worker threads show up only as the main thread waiting for them (``wait``/``_collect``).
Writes the full profile to bench/results/profile-<contender>.{html,txt,top.json}.
"""

from __future__ import annotations

import argparse
import json
import sys

from bench.data import generate
from bench.profiling import render
from bench.run import BUCKET, CHUNK_SIZE, RESULTS, child_env, run_child
from bench.stack import BenchStack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--contender", default="ours", choices=("floor", "peer", "ours"))
    parser.add_argument("--lines", type=int, default=30, help="lines of each view to print")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)

    file = generate(args.rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    prefix = RESULTS / f"profile-{args.contender}"
    with BenchStack() as stack:
        key, etag = stack.upload(f"connections-{args.rows}.jsonl", file.data)
        stack.prepare(args.latency, file.user_ids)
        spec = {
            "contender": args.contender,
            "bucket": BUCKET,
            "key": key,
            "etag": etag,
            "size": len(file.data),
            "profile": str(prefix),
        }
        result, error = run_child(spec, child_env(stack), args.timeout)
        if result is None:
            print(f"{args.contender} failed: {error}")
            return 1
        verified = stack.verify(file.user_ids)
    print(
        f"{args.contender}: {args.rows:,} rows ({file.chunk_count(CHUNK_SIZE)} chunks) at "
        f"{args.latency * 1000:g} ms in {result['wall_s']:.2f} s under the profiler "
        f"(cpu {result['cpu_s']:.2f} s, {verified['requests']} requests)\n"
    )
    summary = json.loads(prefix.with_suffix(".top.json").read_text())
    print(render(summary, args.lines))
    print("== call tree (pyinstrument, library frames folded) ==")
    tree = prefix.with_suffix(".txt").read_text().splitlines()
    print("\n".join(tree[: args.lines * 2]))
    print(f"\nfull profile: {prefix.with_suffix('.html')} (and .txt, .top.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
