"""Bad input, fuzzed: whatever lands in incoming/, the handler returns and says what happened.

Random bytes under every extension, damaged and truncated gzip/zstd streams, byte-level mutations
of valid files, wrong types in every field, lines over MAX_ROW_BYTES, JSON nested 100,000 deep,
CSV-injection-shaped values and decompression bombs go through the real handler and the local
stack. For each file: no exception escapes; a manifest says succeeded, partial or failed; the
counts add up and outcomes.csv has exactly one line per row; a failed file carries an error a
person can act on (never InternalError: that is a crash); no token is written anywhere outside
retry/; spreadsheet formulas reach outcomes.csv only neutralised. The bombs run in a child
process that reports its peak RSS, which must stay far below the bomb's decompressed size.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import subprocess
import sys
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulk_import.model import ROW_FIELDS
from local.events import s3_event
from tests.helpers import all_strings, compress, encode_rows, make_row
from tests.integration.conftest import Stack
from tests.integration.test_hygiene import Secrets, stray_token

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
MAX_ROW_BYTES = 2048
MAX_DECOMPRESSED_BYTES = 2_000_000
FORMATS = ("jsonl", "json", "csv")
COMPRESSIONS = ("", "gz", "zst")
STATUSES = {"succeeded", "partial", "failed"}
# What a person can be told; InternalError means the function crashed on the input.
FILE_ERRORS = {"UnsupportedFile", "MalformedFile", "FileTooLarge"}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
INJECTIONS = (
    "=cmd|' /C calc'!A0",
    "+1+1",
    "@SUM(1)",
    "-2+3",
    '=HYPERLINK("http://x.test","x")',
    "\t=1+1",
    "\r=1+1",
)
_example = itertools.count()

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@dataclass
class Case:
    """One file to import: where it goes, its bytes, and the tokens it holds."""

    name: str
    suffix: str  # ".jsonl", ".csv.gz", …
    body: bytes
    tokens: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def suffix(fmt: str, compression: str) -> str:
    return f".{fmt}" + (f".{compression}" if compression else "")


def rows_with_tokens(ns: list[int]) -> tuple[list[dict[str, Any]], list[str]]:
    rows = [make_row(n, provider=("oura", "fitbit", "garmin")[n % 3]) for n in ns]
    return rows, [r[k] for r in rows for k in ("access_token", "refresh_token")]


# --- strategies -------------------------------------------------------------------------------

fuzz_tokens = st.integers(0, 10**6).map(lambda k: stray_token(f"fuzz/{k}"))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(INJECTIONS)
    | st.sampled_from(["\ud800", "a\udfffb", "\ud83d\ude00", "\x00", "\u2028"])
    | fuzz_tokens,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | fuzz_tokens, children, max_size=4)
    ),
    max_leaves=8,
)
row_numbers = st.lists(st.integers(0, 10**6), min_size=1, max_size=15, unique=True)


@st.composite
def random_bytes(draw: st.DrawFn) -> Case:
    fmt, comp = draw(st.sampled_from(FORMATS)), draw(st.sampled_from(COMPRESSIONS))
    lead = draw(
        st.sampled_from(
            [
                b"",
                b"\x1f\x8b\x08\x00",
                b"\x28\xb5\x2f\xfd",
                b"[",
                b"{",
                b"\xef\xbb\xbf",
                b",".join(f.encode() for f in ROW_FIELDS) + b"\n",
            ]
        )
    )
    body = lead + draw(st.binary(max_size=3000))
    if draw(st.booleans()):  # valid compression around random content
        body = compress(body, comp)
    return Case("random", suffix(fmt, comp), body)


@st.composite
def mutated_files(draw: st.DrawFn) -> Case:
    """A valid file with a few bytes flipped, inserted or deleted (before or after compression)."""
    fmt, comp = draw(st.sampled_from(FORMATS)), draw(st.sampled_from(COMPRESSIONS))
    rows, tokens = rows_with_tokens(draw(row_numbers))
    plain = encode_rows(rows, fmt)
    after_compression = comp != "" and draw(st.booleans())
    data = bytearray(compress(plain, comp) if after_compression else plain)
    for op, at, byte in draw(
        st.lists(
            st.tuples(
                st.sampled_from(["flip", "insert", "delete", "cut"]),
                st.integers(0, 10**9),
                st.integers(0, 255),
            ),
            min_size=1,
            max_size=4,
        )
    ):
        i = at % (len(data) + 1)
        if op == "flip" and i < len(data):
            data[i] ^= byte or 1
        elif op == "insert":
            data.insert(i, byte)
        elif op == "delete" and i < len(data):
            del data[i]
        elif op == "cut":
            del data[i:]
    body = bytes(data) if after_compression else compress(bytes(data), comp)
    return Case("mutated", suffix(fmt, comp), body, tokens)


@st.composite
def wrong_types(draw: st.DrawFn) -> Case:
    """Rows whose fields hold anything JSON can: lists, objects, numbers, tokens, formulas."""
    fmt, comp = draw(st.sampled_from(FORMATS)), draw(st.sampled_from(COMPRESSIONS))
    rows, tokens = rows_with_tokens(draw(row_numbers))
    fields = st.sampled_from([*ROW_FIELDS, "extra", "password"])
    for row in rows:
        row.update(draw(st.dictionaries(fields, json_values, max_size=3)))
    if fmt == "jsonl" and draw(st.booleans()):
        rows.insert(0, draw(json_values))  # a line that is no object at all
    tokens += [t for t in all_strings(rows) if t.startswith("tok-XT-")]
    return Case("wrong-types", suffix(fmt, comp), compress(encode_any(rows, fmt), comp), tokens)


def encode_any(values: list[Any], fmt: str) -> bytes:
    if fmt == "csv":  # UTF-8 cannot hold lone surrogates (only JSON escapes can): swap them
        rows = [v if isinstance(v, dict) else {"user_id": v} for v in values]
        return encode_rows(json.loads(json.dumps(rows).replace("\\ud", "\\u0")), fmt)
    if fmt == "json":
        return json.dumps(values).encode()
    return b"".join(json.dumps(v).encode() + b"\n" for v in values)


# --- the checks -------------------------------------------------------------------------------


@dataclass
class Run:
    key: str
    result: dict[str, Any]
    manifest: dict[str, Any]
    outcomes: list[dict[str, str]]


def import_case(stack: Stack, monkeypatch: pytest.MonkeyPatch, case: Case) -> Run:
    """Import one case under a fresh key and check everything that must hold for any input."""
    monkeypatch.setenv("MAX_ROW_BYTES", str(MAX_ROW_BYTES))
    monkeypatch.setenv("MAX_DECOMPRESSED_BYTES", str(MAX_DECOMPRESSED_BYTES))
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    key = f"incoming/fuzz/{next(_example)}-{case.name}{case.suffix}"
    logs_before, stdout_before = len(stack.log_lines), len(stack.stdout)
    stack.put(key, case.body)

    result = stack.import_keys(key)  # never raises: an exception fails the test here

    (summary,) = result["files"]
    prefix = "results/" + key.removeprefix("incoming/") + "/"
    assert summary["status"] in STATUSES, summary
    manifest = stack.manifest(prefix)
    assert manifest["status"] == summary["status"]
    raw_outcomes = stack.get(prefix + "outcomes.csv").decode()
    outcomes = stack.outcomes(prefix)
    counts = manifest["counts"]
    assert counts["rows"] == sum(v for k, v in counts.items() if k != "rows"), counts
    assert len(outcomes) == counts["rows"]
    assert len(raw_outcomes.splitlines()) == counts["rows"] + 1  # one physical line per row
    assert len({o["line"] for o in outcomes}) == counts["rows"], "one outcome per line"
    tally = Counter(o["outcome"] for o in outcomes)
    assert tally["rejected"] == counts["rejected"]
    assert tally["duplicate"] == counts["duplicates"]
    if manifest["status"] == "failed":
        error = manifest["error"]
        assert error is not None
        assert error["type"] in FILE_ERRORS, error  # InternalError: the function crashed
        assert len(error["message"]) > 20, error
    else:
        assert manifest["error"] is None
    for outcome in outcomes:
        for column in ("user_id", "provider", "detail"):
            cell = outcome[column]
            assert not cell.startswith(FORMULA_START), (column, cell)
            for payload in INJECTIONS:
                assert payload not in cell or cell.startswith("'"), (column, cell)
    written = "\n".join(
        [
            raw_outcomes,
            json.dumps(manifest),
            *stack.log_lines[logs_before:],
            *stack.stdout[stdout_before:],
        ]
    )
    secrets = Secrets([stack.vital.api_key])
    secrets.add(*case.tokens)
    assert secrets.find(written) == []
    return Run(key, result, manifest, outcomes)


@FUZZ
@given(case=random_bytes())
def test_random_bytes_under_every_extension(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, case: Case
) -> None:
    import_case(stack, monkeypatch, case)


@FUZZ
@given(case=mutated_files())
def test_mutated_and_truncated_files(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, case: Case
) -> None:
    import_case(stack, monkeypatch, case)


@FUZZ
@given(case=wrong_types())
def test_wrong_types_in_every_field(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, case: Case
) -> None:
    run = import_case(stack, monkeypatch, case)
    assert run.manifest["status"] != "failed", run.manifest["error"]  # rows fail, not files


# --- deterministic shapes ---------------------------------------------------------------------


def valid_file(fmt: str, count: int = 30, start: int = 0) -> tuple[bytes, list[str]]:
    rows, tokens = rows_with_tokens(list(range(start, start + count)))
    return encode_rows(rows, fmt), tokens


@pytest.mark.parametrize("compression", ["gz", "zst"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_streams_fail_the_file(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, fmt: str, compression: str
) -> None:
    """Cut anywhere (header, middle, checksum/trailer), a compressed file is reported broken:
    never read as a shorter file that happens to parse."""
    plain, tokens = valid_file(fmt, count=40, start=1000)
    packed = compress(plain, compression)
    cuts = sorted({1, 2, 5, 9, 13, len(packed) - 4, len(packed) - 1, *range(20, len(packed), 97)})
    for cut in cuts:
        run = import_case(
            stack, monkeypatch, Case("cut", suffix(fmt, compression), packed[:cut], tokens)
        )
        assert run.manifest["status"] == "failed", (cut, run.manifest["counts"])
        assert run.manifest["error"]["type"] == "MalformedFile", (cut, run.manifest["error"])
        assert "upload" in run.manifest["error"]["message"]


def test_trailing_garbage_after_a_compressed_stream(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain, tokens = valid_file("jsonl", start=2000)
    for comp in ("gz", "zst"):
        body = compress(plain, comp) + b"\x00\x01 trailing garbage \xff" * 3
        run = import_case(stack, monkeypatch, Case("garbage", suffix("jsonl", comp), body, tokens))
        assert run.manifest["status"] == "failed"
        assert run.manifest["error"]["type"] == "MalformedFile"


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_lines_longer_than_max_row_bytes(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, compression: str
) -> None:
    rows, tokens = rows_with_tokens(list(range(3000, 3020)))
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    huge = {**make_row(3999), "access_token": stray_token("huge") + "x" * 500_000}
    tokens += [stray_token("huge"), *rows_with_tokens([3999])[1]]
    # JSONL: the long line is rejected and skipped, every other row still goes.
    body = encode_rows([*rows[:10], huge, *rows[10:]], "jsonl") + b"y" * 300_000 + b"\n"
    run = import_case(
        stack,
        monkeypatch,
        Case("long", suffix("jsonl", compression), compress(body, compression), tokens),
    )
    assert run.manifest["status"] == "partial"
    assert run.manifest["counts"]["imported"] == 20
    assert run.manifest["counts"]["rejected"] == 2
    assert {o["detail"] for o in run.outcomes if o["outcome"] == "rejected"} == {
        f"line is longer than {MAX_ROW_BYTES} bytes"
    }
    # CSV: a long field, or a long line of many short fields, is a rejected row; a quoted field
    # that runs over lines past 4 x MAX_ROW_BYTES is a quote gone wrong, and fails the file.
    header = encode_rows([], "csv")
    for name, line, rejected in (
        ("field", encode_rows([huge], "csv").split(b"\n", 1)[1], True),
        ("commas", b"," * 400_000 + b"\n", True),
        ("quoted-lines", b'"' + b"a\n" * 200_000 + b'"\n', False),
    ):
        body = header + encode_rows(rows, "csv").split(b"\n", 1)[1] + line
        run = import_case(
            stack,
            monkeypatch,
            Case(f"long-{name}", suffix("csv", compression), compress(body, compression), tokens),
        )
        if rejected:
            assert run.manifest["status"] == "partial", name
            (long_row,) = [o for o in run.outcomes if o["outcome"] == "rejected"]
            assert long_row["line"] == "22"
            assert long_row["detail"] == f"line is longer than {MAX_ROW_BYTES} bytes"
            assert run.manifest["counts"]["imported"] == 20
        else:
            assert run.manifest["status"] == "failed"
            assert run.manifest["error"]["type"] == "MalformedFile"
            assert run.manifest["counts"]["rows"] == 20  # the rows before it are reported
    # JSON array: a huge element is passed over and rejected, the rest goes on.
    body = json.dumps([*rows[:10], huge, *rows[10:]]).encode()
    run = import_case(
        stack,
        monkeypatch,
        Case("long", suffix("json", compression), compress(body, compression), tokens),
    )
    assert run.manifest["status"] == "partial"
    assert run.manifest["counts"]["imported"] == 20
    (rejected_row,) = [o for o in run.outcomes if o["outcome"] == "rejected"]
    assert rejected_row["line"] == "11"
    assert rejected_row["detail"] == f"element is larger than {MAX_ROW_BYTES} bytes"


@pytest.mark.parametrize("fmt", FORMATS)
def test_deeply_nested_json(stack: Stack, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    depth = 100_000
    rows, tokens = rows_with_tokens([4000, 4001])
    nested = [
        "[" * depth,
        "[" * depth + "]" * depth,
        '{"a":' * depth + "1" + "}" * depth,
        json.dumps(make_row(4002))[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}",
    ]
    tokens += rows_with_tokens([4002])[1]
    env = {"MAX_ROW_BYTES": str(4 * depth)}  # parsed, not refused for length
    for i, text in enumerate(nested):
        if fmt == "jsonl":
            body = encode_rows(rows, "jsonl") + text.encode() + b"\n"
        elif fmt == "json":
            body = b"[" + json.dumps(rows[0]).encode() + b"," + text.encode() + b"]"
        else:
            body = encode_rows(rows, "csv") + b"oura," + json.dumps(text).encode() + b",a,r,p,1,\n"
        run = import_case(
            stack, monkeypatch, Case(f"nested-{i}", suffix(fmt, ""), body, tokens, env)
        )
        if fmt == "jsonl":
            assert run.manifest["status"] != "failed"
            assert run.manifest["counts"]["rows"] == 3
        if fmt == "json" and i == 0:  # the file ends inside the element
            assert run.manifest["status"] == "failed"
            assert run.manifest["error"]["type"] == "MalformedFile"
        elif fmt == "json":  # the element is passed over and rejected, the rest goes on
            assert run.manifest["status"] == "partial"
            assert run.manifest["counts"]["rows"] == 2
            (deep,) = [o for o in run.outcomes if o["outcome"] == "rejected"]
            assert (deep["line"], deep["detail"]) == ("2", "element is nested too deeply")


def test_csv_injection_values_are_neutralised(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = []
    for i, payload in enumerate(INJECTIONS):
        for column in ("user_id", "provider_id", "provider", "access_token", "expires_at"):
            rows.append(make_row(5000 + i, **{column: payload}))
        rows.append(make_row(5100 + i, oauth_scopes=[payload]))
    tokens = [
        r[k] for r in rows for k in ("access_token", "refresh_token") if r[k].startswith("tok")
    ]
    for fmt in ("csv", "jsonl"):
        case = Case("formulas", suffix(fmt, ""), encode_rows(rows, fmt), tokens)
        run = import_case(stack, monkeypatch, case)
        assert run.manifest["counts"]["rows"] == len(rows)
        assert run.manifest["status"] == "partial"
        # The file itself, every cell as a spreadsheet would read it.
        data = stack.get("results/" + run.key.removeprefix("incoming/") + "/outcomes.csv")
        for record in csv.reader(io.StringIO(data.decode())):
            for cell in record:
                assert not cell.startswith(FORMULA_START), record


def test_numbers_with_too_many_digits_and_lone_surrogates(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's json refuses ints over 4,300 digits with a plain ValueError, and decodes
    ``"\\ud800"`` into a str that cannot be encoded as UTF-8: rows to reject, not crashes."""
    rows, tokens = rows_with_tokens([7000, 7001, 7002])
    digits = "9" * 5000
    row = json.dumps(make_row(7003))[:-1]
    odd = [
        f'{row}, "expires_at": {digits}}}',
        f'{{"expires_at": {digits}}}',
        row + ', "user_id": "\\ud800"}',
        row + ', "provider": "\\udfff", "provider_id": "\\ud800x"}',
        row + ', "access_token": "tok-AT-\\ud800"}',
    ]
    tokens += rows_with_tokens([7003])[1]
    env = {"MAX_ROW_BYTES": "20000"}
    for i, text in enumerate(odd):
        body = encode_rows(rows, "jsonl") + text.encode() + b"\n"
        run = import_case(stack, monkeypatch, Case(f"odd-{i}", ".jsonl", body, tokens, env))
        assert run.manifest["status"] == "partial", run.manifest["error"]
        assert run.manifest["counts"]["rejected"] == 1
        body = b"[" + b",".join([*(json.dumps(r).encode() for r in rows), text.encode()]) + b"]"
        run = import_case(stack, monkeypatch, Case(f"odd-{i}", ".json", body, tokens, env))
        assert run.manifest["status"] == "partial", run.manifest["error"]
        assert run.manifest["counts"]["rejected"] == 1
        if i < 2:  # the element is passed over unbuilt and rejected by its index
            (odd_row,) = [o for o in run.outcomes if o["outcome"] == "rejected"]
            assert (odd_row["line"], odd_row["detail"]) == (
                "4",
                "invalid JSON: a number has too many digits",
            )
    body = encode_rows([*rows, {**make_row(7004), "expires_at": digits}], "csv")
    tokens += rows_with_tokens([7004])[1]
    run = import_case(stack, monkeypatch, Case("digits", ".csv", body, tokens, env))
    assert run.manifest["counts"]["rejected"] == 1


# --- decompression bombs ----------------------------------------------------------------------

BOMB_BYTES = 200 * 1024 * 1024
_BOMB_CHILD = """
import json, resource, sys, tracemalloc
from local.context import LocalLambdaContext
from bulk_import.handler import lambda_handler

def peak_rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

warm_up, bombs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
lambda_handler(warm_up, LocalLambdaContext(900))  # imports, clients, pools: paid before measuring
tracemalloc.start()
report = []
for event in bombs:
    before = peak_rss_kib()
    tracemalloc.reset_peak()
    result = lambda_handler(event, LocalLambdaContext(900))
    report.append(
        {
            "rss_growth_kib": peak_rss_kib() - before,
            "rss_peak_kib": peak_rss_kib(),
            "python_peak_kib": tracemalloc.get_traced_memory()[1] // 1024,
            "files": result["files"],
        }
    )
print("BOMB-REPORT " + json.dumps(report))
"""


def bomb(
    fill: bytes, compression: str, head: bytes = b"", total: int = BOMB_BYTES, window_log: int = 0
) -> bytes:
    """``head`` then ``fill`` repeated to ``total`` bytes, compressed without holding it all."""
    block = fill * (1024 * 1024 // len(fill))
    out = io.BytesIO()
    if compression == "gz":
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
        out.write(packer.compress(head))
        for _ in range(total // len(block)):
            out.write(packer.compress(block))
        out.write(packer.flush())
    else:
        params = zstandard.ZstdCompressionParameters.from_level(3, window_log=window_log)
        packer = zstandard.ZstdCompressor(compression_params=params)
        with packer.stream_writer(out, closefd=False) as writer:
            writer.write(head)
            for _ in range(total // len(block)):
                writer.write(block)
    return out.getvalue()


@pytest.mark.timeout(180)
def test_decompression_bombs_stay_in_bounded_memory(stack: Stack) -> None:
    """200 MB of zeros (and of blank lines, and of spaces in a JSON array), a few hundred KB
    compressed. With MAX_DECOMPRESSED_BYTES at 1 MB each file fails with FileTooLarge; with the
    limit far above the bomb, the whole 200 MB streams through. Either way the child's peak RSS
    grows by far less than the bomb, and so does the peak of Python's own allocations."""
    stack.put("incoming/warm-up.jsonl", encode_rows([make_row(6000)], "jsonl"))
    limited = {
        "incoming/bomb/zeros.jsonl.gz": bomb(b"\x00", "gz"),
        "incoming/bomb/zeros.jsonl.zst": bomb(b"\x00", "zst"),
        "incoming/bomb/blank-lines.csv.gz": bomb(b"\n", "gz", encode_rows([], "csv")),
        "incoming/bomb/spaces.json.zst": bomb(b" ", "zst", b"["),
        # A frame that asks for a 128 MiB decoding window: refused before it is allocated.
        "incoming/bomb/wide-window.jsonl.zst": bomb(b"\x00", "zst", window_log=27),
    }
    unlimited = {"incoming/bomb/whole.jsonl.gz": bomb(b"\x00", "gz")}
    for key, body in {**limited, **unlimited}.items():
        assert len(body) < BOMB_BYTES / 200  # a real bomb: > 200x
        stack.put(key, body)
    events = [s3_event(stack.bucket, [key]) for key in [*limited, *unlimited]]
    env = {**os.environ, "MAX_DECOMPRESSED_BYTES": str(1024 * 1024), "MAX_ROW_BYTES": "4096"}
    reports = []
    for batch, limit in ((events[: len(limited)], None), (events[len(limited) :], 10 * BOMB_BYTES)):
        if limit is not None:
            env["MAX_DECOMPRESSED_BYTES"] = str(limit)
        child = subprocess.run(  # noqa: S603 - our own code, fixed arguments
            [
                sys.executable,
                "-c",
                _BOMB_CHILD,
                json.dumps(s3_event(stack.bucket, ["incoming/warm-up.jsonl"])),
                json.dumps(batch),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        assert child.returncode == 0, child.stderr[-3000:]
        line = next(x for x in child.stdout.splitlines() if x.startswith("BOMB-REPORT "))
        reports += json.loads(line.removeprefix("BOMB-REPORT "))
    for key, report in zip([*limited, *unlimited], reports, strict=True):
        manifest = stack.manifest("results/" + key.removeprefix("incoming/") + "/")
        # Against 200 MB decompressed: the process's peak RSS grows by less than 64 MB, and
        # what Python allocates while the bomb goes off (tracemalloc's peak) stays under 16 MB.
        assert report["rss_growth_kib"] < 64 * 1024, (key, report)
        assert report["python_peak_kib"] < 16 * 1024, (key, report)
        if key.endswith("wide-window.jsonl.zst"):
            assert manifest["error"]["type"] == "MalformedFile", manifest["error"]
            assert "window" in manifest["error"]["message"]
        elif key in limited:
            assert manifest["status"] == "failed", key
            assert manifest["error"]["type"] == "FileTooLarge", (key, manifest["error"])
            assert "MAX_DECOMPRESSED_BYTES" in manifest["error"]["message"]
        else:  # one 200 MB "line": rejected as too long, read to the end in bounded memory
            assert manifest["status"] == "partial", manifest
            assert manifest["counts"]["rejected"] == 1
