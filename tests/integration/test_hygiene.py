"""Token hygiene, proven: no token and never the API key leaves the function except in retry/.

A corpus of 1,500 connections over five providers (every token distinct, the Garmin rows with
OAuth 1.0 token secrets full of spaces and punctuation) goes through the handler on the success
path and on every failure path: invalid rows of many shapes, tokens in the wrong CSV columns,
Vital's 422 (pointed at connections and unattributable), 5xx until the retries run out, dropped
connections, 401 and 403, a file corrupt half-way, and unexpected crashes whose messages quote a
token. Vital is the stand-in behind a transport that makes every error answer echo the request:
FastAPI's 422 puts the offending input (the whole connection) in ``input``, and careless APIs put
bodies and keys in their ``detail`` strings.

After each run every token is searched for (whole, by its unique tail, and by its marker) in
everything the function wrote outside retry/ (results/, its log lines at DEBUG, EMF metrics on
stdout), in what its libraries logged at DEBUG, and in any exception that escaped. retry.jsonl
must hold exactly the failed and errored rows with their tokens, and nothing else. A subprocess
run with the X-Ray SDK switched on does the same for the trace segments it emits.

Two leaks are pinned by tests: botocore's DEBUG log of the API key (the package
holds the 'botocore' logger at INFO), and a crash on a worker thread (a failed manifest).
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import stamina
from pydantic_core import to_json

from bulk_import.ingest.chunking import serialise
from bulk_import.ingest.validation import validate_row
from bulk_import.model import ConnectionRow, WellFormedRow
from bulk_import.observability import logger as function_logger
from bulk_import.vital import ChunkReport, post_chunk
from local.events import s3_event
from tests.helpers import (
    RECIPE_COLUMNS,
    access_token,
    all_strings,
    compress,
    encode_rows,
    make_row,
    refresh_token,
)
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
MAX_ROW_BYTES = 8192
PROVIDERS = ("oura", "fitbit", "garmin", "whoop_v2", "polar")
CORPUS = 1500
RETRY_OUTCOMES = frozenset({"failed", "errored"})
OUTPUT_PREFIXES = ("incoming/", "results/", "retry/")
# Every token of these tests carries one of these markers, and ends in 12 hex digits of its own.
_MARKER = re.compile(r"tok(?:-(?:AT|RT|XT)-|\s*sec,ret/)", re.IGNORECASE)
_HEX_RUN = re.compile(r"[0-9a-f]{12,}")
# Threads of the function (and of boto3's transfer manager); the in-process moto server and the
# stand-in log from their own threads, and they see tokens by design.
_CLIENT_THREADS = ("MainThread", "vital-post", "ThreadPoolExecutor")


# --- the corpus -------------------------------------------------------------------------------


def _tail(seed: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, seed).hex[:12]


def oauth1_secret(n: int) -> str:
    """An OAuth 1.0 token secret with spaces and punctuation, e.g. ``tok sec,ret/7+9f…``."""
    return f"tok sec,ret/{n}+{_tail(f'oauth1/{n}')}"


def stray_token(label: str) -> str:
    """A token-shaped value where no token belongs: extra fields, wrong columns."""
    return f"tok-XT-{_tail(f'stray/{label}')}"


def corpus_row(n: int) -> dict[str, Any]:
    provider = PROVIDERS[n % len(PROVIDERS)]
    row = make_row(n, provider=provider)
    if provider == "garmin":  # OAuth 1.0: the refresh token is the token secret
        row.update(refresh_token=oauth1_secret(n), expires_at=2_147_483_647, oauth_scopes=None)
    return row


def corpus(count: int = CORPUS, start: int = 0) -> list[dict[str, Any]]:
    return [corpus_row(n) for n in range(start, start + count)]


def known(rows: Iterable[dict[str, Any]], unknown_every: int = 7) -> list[str]:
    """Users Vital knows: all but every ``unknown_every``-th (those come back failed)."""
    return [r["user_id"] for i, r in enumerate(rows) if i % unknown_every]


def retry_row(data: dict[str, Any]) -> dict[str, Any]:
    """What retry.jsonl holds for a row: provider and the ConnectionRecipe, tokens included."""
    row = validate_row(data, None)
    assert isinstance(row, ConnectionRow), row
    return {"provider": row.provider, **json.loads(serialise(row))}


# --- finding tokens ---------------------------------------------------------------------------


class Secrets:
    """Token values (and API keys) to look for in text.

    A token is found whole, by its unique 12-hex tail (which survives truncation, re-quoting,
    JSON or URL escaping and lower-casing), or by its marker (which survives partial masking).
    """

    def __init__(self, api_keys: Iterable[str]) -> None:
        self.api_keys = sorted(set(api_keys))
        self._by_tail: dict[str, str] = {}

    def add(self, *values: Any) -> None:
        for value in values:
            if isinstance(value, str) and _MARKER.match(value):
                tail = re.search("[0-9a-f]{12}", value.lower())
                assert tail is not None, value
                self._by_tail[tail.group()] = value

    def add_rows(self, rows: Iterable[Any]) -> None:
        for row in rows:
            if isinstance(row, dict):
                self.add(*all_strings(row))

    def __len__(self) -> int:
        return len(self._by_tail)

    def find(self, text: str, *, api_keys: bool = True) -> list[str]:
        found = [_around(text, m.start(), m.end()) for m in _MARKER.finditer(text)]
        for m in _HEX_RUN.finditer(text.lower()):
            run = m.group()
            for i in range(len(run) - 11):
                if run[i : i + 12] in self._by_tail:
                    found.append(_around(text, m.start() + i, m.start() + i + 12))
        for key in self.api_keys if api_keys else ():
            found += [
                _around(text, m.start(), m.end())
                for m in re.finditer(re.escape(key), text, re.IGNORECASE)
            ]
        return found


def _around(text: str, start: int, end: int) -> str:
    return repr(text[max(0, start - 100) : end + 60])


class ClientLogs(logging.Handler):
    """Every log record of the function's own threads, from any library (boto3, httpx, …)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(threadName)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if not record.threadName or not record.threadName.startswith(_CLIENT_THREADS):
            return
        service = function_logger.service
        if record.name == service or record.name.startswith(service + "."):
            # Powertools puts a filter on the root handlers that exist when it starts (Lambda's)
            # so that its records are not printed twice; the stack fixture captures those.
            return
        self.lines.append(self.format(record))


# --- Vital that echoes ------------------------------------------------------------------------


class EchoingVital(httpx.BaseTransport):
    """Real HTTP to the stand-in; every error answer to bulk_import is made to echo the request.

    422 issues get FastAPI's ``input`` (the connection they point at, or the whole body), a
    ``ctx`` and a ``msg`` that quote the tokens; string ``detail`` gets the request body and the
    API key that was presented. The function must repeat none of it.
    """

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if response.status_code < 400 or not request.url.path.endswith("/bulk_import"):
            return response
        raw = response.read()
        response.close()
        try:
            payload = json.loads(raw)
            sent = json.loads(request.content)
        except ValueError:  # HTML from a "load balancer" (502/504): nothing to echo into
            return httpx.Response(response.status_code, headers=response.headers, content=raw)
        if isinstance(payload, dict):
            echo(payload, sent, request.headers.get("x-vital-api-key", ""))
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in {"content-length", "content-encoding"}
        }
        return httpx.Response(
            response.status_code, headers=headers, content=json.dumps(payload).encode()
        )

    def close(self) -> None:
        self._inner.close()


def echo(payload: dict[str, Any], sent: dict[str, Any], key: str) -> None:
    connections = sent.get("connections") or [{}]
    detail = payload.get("detail")
    if not isinstance(detail, list):
        payload["detail"] = f"{detail} (request: {json.dumps(sent)}; x-vital-api-key: {key})"
        return
    for issue in detail:
        loc = issue.get("loc") or []
        index = next(
            (
                loc[i + 1]
                for i in range(len(loc) - 1)
                if loc[i] == "connections" and isinstance(loc[i + 1], int)
            ),
            None,
        )
        echoed = connections[index] if index is not None else sent
        first = connections[index if index is not None else 0]
        issue["input"] = echoed
        issue["ctx"] = {"error": f"cannot import {json.dumps(echoed)}"}
        issue["msg"] = (
            f"{issue.get('msg', '')}: token {first.get('access_token')} "
            f"(refresh {first.get('refresh_token')}) was refused"
        )
        issue["url"] = "https://errors.pydantic.dev/2.11/v/value_error"


# --- the harness ------------------------------------------------------------------------------


@dataclass
class Hygiene:
    stack: Stack
    logs: ClientLogs
    secrets: Secrets
    raised: list[str] = field(default_factory=list)

    def put(self, key: str, body: bytes, rows: Iterable[Any] = ()) -> None:
        self.secrets.add_rows(rows)
        self.stack.put(key, body)

    def run(
        self, *keys: str, transport: httpx.BaseTransport | None = None, **fakes: Any
    ) -> dict[str, Any] | None:
        """Import ``keys`` in one event, Vital's error answers echoing the request (unless
        ``transport`` says otherwise)."""
        try:
            return self.stack.import_keys(*keys, transport=transport or EchoingVital(), **fakes)
        except Exception as exc:  # noqa: BLE001 - searched for tokens, then reported
            self.raised.append("".join(traceback.format_exception(exc)))
            return None

    def verify(
        self, files: dict[str, dict[int, dict[str, Any]]], *, in_process: bool = True
    ) -> list[dict[str, Any]]:
        """Search everything for tokens; check each file's outputs and retry.jsonl.

        ``files`` maps each imported key to its rows by line (those that may reach Vital).
        Returns the manifests.
        """
        written = self.stack.everything_written()
        leaks = {
            "results/, function logs, EMF metrics": self.secrets.find(written),
            "exceptions": self.secrets.find("\n".join(self.raised)),
            # botocore logs the API key at DEBUG (see test_library_debug_logs_hold_no_api_key)
            "library logs": self.secrets.find("\n".join(self.logs.lines), api_keys=False),
        }
        assert not any(leaks.values()), {k: v[:5] for k, v in leaks.items() if v}
        assert not self.raised, self.raised
        # And the search was not vacuous.
        assert len(self.secrets) > 100
        assert "outcomes.csv" in written
        if in_process:
            assert self.stack.log_lines
            assert self.logs.lines, "library logs were not captured"
        objects = self.keys()
        assert all(k.startswith(OUTPUT_PREFIXES) for k in objects), objects
        for key in objects:
            if key.startswith("results/"):
                body = self.stack.get(key).decode("utf-8", "replace")
                assert not self.secrets.find(body), key
        return [self.check_file(key, originals, objects) for key, originals in files.items()]

    def keys(self) -> list[str]:
        pages = self.stack.s3.get_paginator("list_objects_v2").paginate(Bucket=self.stack.bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def check_file(
        self, key: str, originals: dict[int, dict[str, Any]], objects: list[str]
    ) -> dict[str, Any]:
        path = key.removeprefix("incoming/")
        manifest = self.stack.manifest(f"results/{path}/")
        outcomes = self.stack.outcomes(f"results/{path}/")
        counts = manifest["counts"]
        assert counts["rows"] == sum(v for k, v in counts.items() if k != "rows")
        assert len(outcomes) == counts["rows"] == len({o["line"] for o in outcomes})
        tally = Counter(o["outcome"] for o in outcomes)
        assert tally["failed"] == counts["failed"]
        assert tally["errored"] == counts["errored"]
        retry_key = f"retry/{path}/retry.jsonl"
        stored = [k for k in objects if k.startswith(f"retry/{path}/")]
        lines = [int(o["line"]) for o in outcomes if o["outcome"] in RETRY_OUTCOMES]
        if not lines:
            assert stored == []
            assert manifest["retry_key"] is None
            return manifest
        assert stored == [retry_key]
        assert manifest["retry_key"] == retry_key
        got = [json.loads(line) for line in self.stack.get(retry_key).decode().splitlines()]
        want = [retry_row(originals[line]) for line in lines]
        assert sorted(got, key=_canonical) == sorted(want, key=_canonical)
        return manifest


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)


@pytest.fixture
def client_logs() -> Iterator[ClientLogs]:
    """The root logger at DEBUG, as Lambda sets it when the function's ApplicationLogLevel is
    DEBUG; the function's own logger at DEBUG too (POWERTOOLS_LOG_LEVEL)."""
    capture = ClientLogs()
    root = logging.getLogger()
    root_level, function_level = root.level, function_logger.log_level
    root.setLevel(logging.DEBUG)
    function_logger.setLevel(logging.DEBUG)
    root.addHandler(capture)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(root_level)
        function_logger.setLevel(function_level)


@pytest.fixture
def hygiene(
    stack: Stack, client_logs: ClientLogs, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Hygiene]:
    monkeypatch.setenv("CHUNK_SIZE", "100")
    monkeypatch.setenv("MAX_ROW_BYTES", str(MAX_ROW_BYTES))
    with stamina.set_testing(True, attempts=2):
        yield Hygiene(stack, client_logs, Secrets([stack.vital.api_key]))


def by_line(rows: list[dict[str, Any]], first_line: int = 1) -> dict[int, dict[str, Any]]:
    return {first_line + i: row for i, row in enumerate(rows)}


# --- success ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "compression"), [("jsonl", ""), ("csv", "gz"), ("json", "zst")])
def test_a_successful_import_writes_no_token(hygiene: Hygiene, fmt: str, compression: str) -> None:
    rows = corpus()
    hygiene.stack.vital.add_known_users(*known(rows))
    key = f"incoming/corpus.{fmt}" + (f".{compression}" if compression else "")
    hygiene.put(key, compress(encode_rows(rows, fmt), compression), rows)

    hygiene.run(key)

    (manifest,) = hygiene.verify({key: by_line(rows, 2 if fmt == "csv" else 1)})
    assert manifest["status"] == "partial"  # every 7th user is unknown to Vital: failed
    assert manifest["counts"]["imported"] == len(known(rows))
    assert manifest["counts"]["failed"] == CORPUS - len(known(rows))


# --- invalid input ----------------------------------------------------------------------------

SURROGATE = "\ud800"


def invalid_values(n: int) -> list[Any]:
    """JSON values of many shapes, each holding the tokens of row ``n`` (and stray tokens)."""
    base = make_row(n, provider=PROVIDERS[n % len(PROVIDERS)])
    at, rt = access_token(n), refresh_token(n)
    xt = [stray_token(f"{n}/{i}") for i in range(6)]
    without = {k: v for k, v in base.items() if k not in {"access_token", "refresh_token"}}
    shapes: list[Any] = [
        # token fields of the wrong type
        {**base, "access_token": 123456},
        {**base, "access_token": [at]},
        {**base, "access_token": {"value": at}},
        {**base, "access_token": {at: rt}},
        {**base, "refresh_token": [{"secret": rt}]},
        {**base, "access_token": {"a": {"b": [at, {"c": rt}]}}},
        {**base, "access_token": True},
        {**base, "access_token": None},
        {**base, "access_token": "   "},
        {**base, "access_token": at + SURROGATE},
        {**without, "token": at},
        # valid tokens next to a broken field
        {**base, "user_id": "bad"},
        {**base, "user_id": at},
        {**base, "user_id": [at]},
        {**base, "user_id": {"id": rt}},
        {**base, "user_id": 12345},
        {**base, "user_id": SURROGATE + at},
        {**base, "expires_at": "soon"},
        {**base, "expires_at": at},
        {**base, "expires_at": [1]},
        {**base, "expires_at": 1.5},
        {**base, "expires_at": True},
        {**base, "expires_at": "9" * 4400},
        {**base, "provider": "myspace"},
        {**base, "provider": at},
        {**base, "provider": at.upper()},
        {**base, "provider": {at: 1}},
        {**base, "provider_id": None},
        {**base, "provider_id": [at]},
        {**base, "provider_id": {"id": rt}},
        {**base, "oauth_scopes": {at: 1}},
        {**base, "oauth_scopes": [at, 5]},
        {**base, "oauth_scopes": 5},
        # unknown fields holding tokens, on an invalid row
        {**base, "user_id": "bad", "password": xt[0], "client_secret": xt[1]},
        # not objects at all
        [at, rt],
        at,
        {at: rt},
        # a valid row with unknown fields holding tokens: sent, the extras never are
        {
            **base,
            "password": xt[2],
            "id_token": xt[3],
            "tokens": {"access": xt[4]},
            xt[5]: rt,
        },
    ]
    return shapes


def invalid_lines(n: int) -> list[bytes]:
    """JSONL lines that do not parse, each holding tokens of row ``n``."""
    at, rt = access_token(n), refresh_token(n)
    row = json.dumps(make_row(n))
    return [
        f'{{"access_token": "{at}", "refresh_token": '.encode(),
        f'{{"access_token": {at}, "refresh_token": "{rt}"}}'.encode(),
        f"{{'access_token': '{at}'}}".encode(),
        f'{{"access_token": "{at}\x01", "refresh_token": "{rt}"}}'.encode(),
        json.dumps({**make_row(n), "access_token": at + "x" * 9000}).encode(),
        f'{{"access_token": "{at}'.encode() + b'\xff\xfe", "x": 1}',
        ("[" * 3000 + json.dumps(at) + "]" * 3000).encode(),
        f'{{"expires_at": {"9" * 4400}, "access_token": "{at}"}}'.encode(),
        row[: len(row) // 2].encode(),
    ]


def mixed_jsonl(start: int, rows: list[dict[str, Any]]) -> tuple[bytes, list[Any]]:
    """``rows`` with invalid values and lines between them; the body and every value in it."""
    values = [v for i in range(12) for v in invalid_values(start + i)]
    lines = [line for i in range(12) for line in invalid_lines(start + 100 + i)]
    body: list[bytes] = []
    extras = iter([*(json.dumps(v).encode() for v in values), *lines])
    for i, row in enumerate(rows):
        body.append(json.dumps(row).encode())
        if i % 3 == 0:
            body.append(next(extras, b"{}"))
    body.extend(extras)
    everything = [*rows, *values, *(make_row(start + 100 + i) for i in range(12))]
    return b"\n".join(body) + b"\n", everything


def valid_lines(body: bytes) -> dict[int, dict[str, Any]]:
    """The lines of a JSONL body that validate, as the function reads them."""
    valid = {}
    for line, raw in enumerate(body.splitlines(), start=1):
        if len(raw) > MAX_ROW_BYTES:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(validate_row(value, None), ConnectionRow):
            valid[line] = value
    return valid


def stray_tokens(start: int, count: int) -> list[str]:
    return [stray_token(f"{start + i}/{j}") for i in range(count) for j in range(6)]


def test_invalid_rows_of_many_shapes_write_no_token(hygiene: Hygiene) -> None:
    rows = corpus()
    body, values = mixed_jsonl(50_000, rows)
    valid = valid_lines(body)
    assert len(valid) == CORPUS + 12  # the corpus, and one valid row with extra fields per n
    hygiene.stack.vital.add_known_users(*known(valid[line] for line in sorted(valid)))
    hygiene.put("incoming/shapes.jsonl", body, values)
    hygiene.secrets.add(*stray_tokens(50_000, 12))

    hygiene.run("incoming/shapes.jsonl")

    (manifest,) = hygiene.verify({"incoming/shapes.jsonl": valid})
    assert manifest["status"] == "partial"
    assert manifest["error"] is None, manifest["error"]
    assert manifest["counts"]["rejected"] == len(body.splitlines()) - len(valid)
    assert set(manifest["providers"]) <= set(PROVIDERS)


def test_invalid_elements_of_a_json_array_write_no_token(hygiene: Hygiene) -> None:
    rows = corpus(300)
    values: list[Any] = [v for i in range(8) for v in invalid_values(60_000 + i)]
    elements = [*rows[:150], *values, *rows[150:]]
    valid = {
        i: v
        for i, v in enumerate(elements, start=1)
        if isinstance(v, dict) and isinstance(validate_row(v, None), ConnectionRow)
    }
    hygiene.stack.vital.add_known_users(*known(rows))
    hygiene.put("incoming/shapes.json.gz", gzip.compress(json.dumps(elements).encode()), elements)
    hygiene.secrets.add(*stray_tokens(60_000, 8))

    hygiene.run("incoming/shapes.json.gz")

    (manifest,) = hygiene.verify({"incoming/shapes.json.gz": valid})
    assert manifest["error"] is None, manifest["error"]
    assert manifest["counts"]["rejected"] == len(elements) - len(valid)


def test_tokens_in_the_wrong_csv_columns_are_never_shown(hygiene: Hygiene) -> None:
    header = [*RECIPE_COLUMNS, "password"]  # an unknown column, holding tokens too
    rows = corpus(400)
    lines: list[list[str]] = []
    originals: dict[int, dict[str, Any]] = {}

    def cells(row: dict[str, Any]) -> list[str]:
        scopes = row.get("oauth_scopes")
        values = {**row, "oauth_scopes": " ".join(scopes) if scopes else ""}
        return [str(values.get(c) if values.get(c) is not None else "") for c in RECIPE_COLUMNS]

    for i, row in enumerate(rows):
        lines.append([*cells(row), stray_token(f"pw/{i}")])
        originals[len(lines) + 1] = row
        if i % 10:
            continue
        n = 70_000 + i
        bad = corpus_row(n)
        p, u, at, rt = bad["provider"], bad["user_id"], bad["access_token"], bad["refresh_token"]
        pid, exp, xt = bad["provider_id"], str(bad["expires_at"]), stray_token(f"col/{i}")
        scopes = cells(bad)[-1]
        wrong = [
            [p, at, u, rt, pid, exp, scopes, ""],  # user_id and access_token swapped
            [u, at, rt, pid, exp, scopes, "", ""],  # shifted left: a UUID as the provider
            ["", p, u, at, rt, pid, exp, scopes],  # shifted right
            [at, u, at, rt, pid, exp, scopes, ""],  # a token as the provider
            [at.upper(), u, at, rt, pid, exp, scopes, ""],
            [p, u, at, rt, pid, rt, scopes, ""],  # a token as expires_at
            [p, u, at, rt, pid, exp, scopes, "", xt],  # one field too many
            [p, u, at],  # too few
        ]
        lines.extend(wrong)
        # A token as provider_id or in the scopes is a valid row: sent, never shown.
        odd = {**bad, "user_id": corpus_row(n + 1)["user_id"], "provider_id": xt}
        lines.append([*cells(odd), ""])
        originals[len(lines) + 1] = odd
    body = encode_csv([header, *lines])
    hygiene.stack.vital.add_known_users(*known(rows))
    hygiene.put(
        "incoming/columns.csv", body, [*rows, *(corpus_row(70_000 + i) for i in range(400))]
    )
    hygiene.secrets.add(*(stray_token(f"pw/{i}") for i in range(400)))
    hygiene.secrets.add(*(stray_token(f"col/{i}") for i in range(400)))

    hygiene.run("incoming/columns.csv")

    (manifest,) = hygiene.verify({"incoming/columns.csv": originals})
    assert manifest["error"] is None, manifest["error"]
    assert manifest["counts"]["rejected"] == 40 * 8
    assert set(manifest["providers"]) <= set(PROVIDERS)


def encode_csv(lines: list[list[str]]) -> bytes:
    import csv  # noqa: PLC0415 - only here
    import io  # noqa: PLC0415

    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(lines)
    return out.getvalue().encode()


# --- Vital refuses, fails, drops --------------------------------------------------------------


def put_corpus(
    hygiene: Hygiene, key: str, rows: list[dict[str, Any]] | None = None
) -> dict[int, dict[str, Any]]:
    rows = rows if rows is not None else corpus()
    hygiene.stack.vital.add_known_users(*known(rows))
    hygiene.put(key, encode_rows(rows, "jsonl"), rows)
    return by_line(rows)


def test_422_pointing_at_connections_echoes_nothing(hygiene: Hygiene) -> None:
    originals = put_corpus(hygiene, "incoming/pointed.jsonl")
    refused = [row["user_id"] for line, row in originals.items() if line % 37 == 0]
    hygiene.stack.vital.reject_user_ids = set(refused)

    hygiene.run("incoming/pointed.jsonl")

    (manifest,) = hygiene.verify({"incoming/pointed.jsonl": originals})
    outcomes = hygiene.stack.outcomes("results/pointed.jsonl/")
    rejected = {o["user_id"] for o in outcomes if o["outcome"] == "rejected"}
    assert rejected == set(refused)
    assert manifest["counts"]["rejected"] == len(refused)


def test_unattributable_422_echoes_nothing(hygiene: Hygiene) -> None:
    originals = put_corpus(hygiene, "incoming/unattributed.jsonl")
    refused = [originals[line]["user_id"] for line in (5, 700, 1400)]
    hygiene.stack.vital.reject_unattributed = set(refused)

    hygiene.run("incoming/unattributed.jsonl")

    (manifest,) = hygiene.verify({"incoming/unattributed.jsonl": originals})
    outcomes = hygiene.stack.outcomes("results/unattributed.jsonl/")
    assert {o["user_id"] for o in outcomes if o["outcome"] == "rejected"} == set(refused)
    assert manifest["status"] == "partial"


# --- Vital echoes a fragment of a token -------------------------------------------------------

_NOT_HEX = "ghijklmnopqrstuv"


def fragment_token(kind: str, n: int) -> str:
    """``tok-AT-<14 letters>-<12 hex>``: every window of 8 holds a letter or is in the tail, so
    that one found in the output is the token's, not a UUID's or a request id's."""
    letters = "".join(_NOT_HEX[int(c, 16)] for c in _tail(f"letters/{kind}/{n}") + "ab")
    return f"tok-{kind}-{letters}-{_tail(f'{kind}/{n}')}"


def fragments(tokens: Iterable[str], text: str, length: int = 8) -> list[str]:
    """Each window of ``length`` characters of ``tokens`` found in ``text``, in context."""
    windows = {t[i : i + length] for t in tokens for i in range(len(t) - length + 1)}
    return [
        _around(text, i, i + length)
        for i in range(len(text) - length + 1)
        if text[i : i + length] in windows
    ]


class RecordingVital(httpx.BaseTransport):
    """Real HTTP to the stand-in, keeping the body of each 422 answer to bulk_import."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.refusals: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        if response.status_code == 422 and request.url.path.endswith("/bulk_import"):
            self.refusals.append(response.read().decode())
        return response

    def close(self) -> None:
        self._inner.close()


@pytest.mark.parametrize("refusal", ["pointed", "unattributed"])
def test_a_422_echoing_a_token_prefix_leaks_no_fragment(hygiene: Hygiene, refusal: str) -> None:
    rows = [
        {
            **corpus_row(n),
            "access_token": fragment_token("AT", n),
            "refresh_token": fragment_token("RT", n),
        }
        for n in range(90_000, 90_300)
    ]
    originals = put_corpus(hygiene, "incoming/fragments.jsonl", rows)
    vital = hygiene.stack.vital
    vital.echo_token_prefix = True
    if refusal == "pointed":
        vital.reject_user_ids = {row["user_id"] for line, row in originals.items() if line % 9 == 0}
    else:
        vital.reject_unattributed = {originals[line]["user_id"] for line in (40, 250)}
    spy = RecordingVital()

    hygiene.run("incoming/fragments.jsonl", transport=spy)

    (manifest,) = hygiene.verify({"incoming/fragments.jsonl": originals})
    tokens = [row[name] for row in rows for name in ("access_token", "refresh_token")]
    # The stand-in did echo the first 14 characters of the offending tokens ...
    echoed = {token[:14] for token in tokens if any(token[:14] in r for r in spy.refusals)}
    assert len(echoed) >= (2 if refusal == "unattributed" else 30), spy.refusals[:3]
    assert manifest["counts"]["rejected"] > 0
    # ... and no 8 characters of any token are in a manifest, an outcome, a log line or stdout.
    outputs = "\n".join([hygiene.stack.everything_written(), *hygiene.logs.lines, *hygiene.raised])
    assert "outcomes.csv" in outputs
    assert fragments(tokens, outputs) == []
    messages = [o["detail"] for o in hygiene.stack.outcomes("results/fragments.jsonl/")]
    assert any("[REDACTED]" in m for m in messages)


@pytest.mark.parametrize("fault", ["5xx", "drop"])
def test_retries_running_out_echo_nothing(hygiene: Hygiene, fault: str) -> None:
    originals = put_corpus(hygiene, "incoming/unavailable.jsonl")
    if fault == "5xx":
        hygiene.stack.vital.status_script = [500, 503, 502, 504] * 200
    else:
        hygiene.stack.vital.drop_script = [True] * 800

    hygiene.run("incoming/unavailable.jsonl")

    (manifest,) = hygiene.verify({"incoming/unavailable.jsonl": originals})
    assert manifest["counts"]["errored"] == CORPUS  # all of them in retry.jsonl
    assert hygiene.stack.vital.bulk_import_requests()


@pytest.mark.parametrize("refusal", [401, 403])
def test_refused_key_or_disabled_migration_echoes_nothing(hygiene: Hygiene, refusal: int) -> None:
    originals = put_corpus(hygiene, "incoming/refused.jsonl")
    vital = hygiene.stack.vital
    if refusal == 401:
        # The account's key was rotated: the function's (from Secrets Manager) is refused.
        vital.api_key = "sk_rotated_" + uuid.uuid4().hex
        hygiene.secrets.api_keys.append(vital.api_key)
    else:
        vital.link_migration_enabled = False

    hygiene.run("incoming/refused.jsonl")

    (manifest,) = hygiene.verify({"incoming/refused.jsonl": originals})
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "ImportAborted"
    assert ("API key" if refusal == 401 else "Link Migration") in manifest["error"]["message"]
    assert manifest["counts"]["errored"] == CORPUS
    assert len(vital.bulk_import_requests()) == 1  # the probe chunk only


def test_library_debug_logs_hold_no_api_key(hygiene: Hygiene) -> None:
    put_corpus(hygiene, "incoming/small.jsonl", corpus(20))

    hygiene.run("incoming/small.jsonl")

    assert hygiene.logs.lines
    assert hygiene.secrets.find("\n".join(hygiene.logs.lines)) == []


# --- broken files and crashes -----------------------------------------------------------------


def corrupt_gzip(body: bytes) -> bytes:
    packed = gzip.compress(body)
    return packed[: len(packed) * 3 // 5] + b"\x00garbage\xff" * 50


def truncated_zstd(body: bytes) -> bytes:
    packed = compress(body, "zst")
    return packed[: len(packed) * 3 // 5]


def bad_utf8_csv(rows: list[dict[str, Any]]) -> bytes:
    body = encode_rows(rows, "csv")
    cut = body.index(b"\n", len(body) * 3 // 5)
    return body[:cut] + b"\n\xff\xfe not utf-8 \xc3\x28\n" + body[cut + 1 :]


@pytest.mark.parametrize(
    ("key", "build"),
    [
        ("incoming/broken.jsonl.gz", lambda rows: corrupt_gzip(encode_rows(rows, "jsonl"))),
        ("incoming/broken.jsonl.zst", lambda rows: truncated_zstd(encode_rows(rows, "jsonl"))),
        ("incoming/broken.csv", bad_utf8_csv),
    ],
    ids=["gzip-garbage", "zstd-truncated", "csv-not-utf8"],
)
def test_a_file_corrupt_half_way_leaks_nothing(
    hygiene: Hygiene, key: str, build: Callable[[list[dict[str, Any]]], bytes]
) -> None:
    # Rows padded with an unknown field, so that well over 1 MB (the read buffer) comes before
    # the damage: rows are read, validated and sent before the file turns out to be broken.
    rows = [{**row, "notes": "n" * 1000} for row in corpus()]
    hygiene.stack.vital.add_known_users(*known(rows))
    hygiene.put(key, build(rows), rows)

    hygiene.run(key)

    (manifest,) = hygiene.verify({key: by_line(rows, 2 if ".csv" in key else 1)})
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "MalformedFile", manifest["error"]
    assert 0 < manifest["counts"]["rows"] < CORPUS
    assert manifest["chunks"]  # some of it went to Vital before the damage was found


def _crash_key_error(row: dict[str, Any]) -> bytes:
    raise KeyError(row["access_token"])


def _crash_int_literal(row: dict[str, Any]) -> bytes:
    return str(int(row["refresh_token"])).encode()  # the OAuth 1.0 secret is no number


def _crash_pydantic(row: dict[str, Any]) -> bytes:
    ConnectionRow.model_validate(
        {"access_token": [row["access_token"]], "user_id": row["refresh_token"]}
    )
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "crash",
    [_crash_key_error, _crash_int_literal, _crash_pydantic],
    ids=["KeyError", "ValueError", "ValidationError"],
)
def test_an_unexpected_crash_quoting_a_token_leaks_nothing(
    hygiene: Hygiene, crash: Callable[[dict[str, Any]], bytes]
) -> None:
    originals = put_corpus(hygiene, "incoming/crash.jsonl")
    target = originals[703]  # a garmin row (n = 702): its secret has spaces and punctuation
    assert target["provider"] == "garmin"

    def crashing(row: WellFormedRow) -> bytes:
        # What the hot path serialises a well-formed row's recipe with, crashing on the target
        fields = dict(row)
        return crash(fields) if fields["user_id"] == target["user_id"] else to_json(row)

    hygiene.run("incoming/crash.jsonl", serialise=crashing)

    (manifest,) = hygiene.verify({"incoming/crash.jsonl": originals})
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "InternalError"
    assert any("unexpected error" in line for line in hygiene.stack.log_lines)


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_crash_while_posting_leaks_nothing(hygiene: Hygiene) -> None:
    originals = put_corpus(hygiene, "incoming/crash-posting.jsonl", corpus(250))

    def crashing(client: Any, chunk: Any, *args: Any, **kwargs: Any) -> ChunkReport:
        if chunk.last_line == max(originals):  # the last chunk: collected by the final drain
            raise KeyError(originals[chunk.rows[0].line]["access_token"])
        return post_chunk(client, chunk, *args, **kwargs)

    hygiene.run("incoming/crash-posting.jsonl", post_chunk=crashing)

    (manifest,) = hygiene.verify({"incoming/crash-posting.jsonl": originals})
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "InternalError"


# --- traces -----------------------------------------------------------------------------------

# The handler once, in a process of its own, with Vital's error answers echoing the request.
_CHILD = """
import json, sys
from bulk_import import handler, wiring
from local.context import LocalLambdaContext
from tests.integration.test_hygiene import EchoingVital

echoing = handler.make_handler(
    lambda settings, context: wiring.build(settings, context, transport=EchoingVital())
)
result = echoing(json.loads(sys.argv[1]), LocalLambdaContext(timeout_seconds=float(sys.argv[2])))
sys.stdout.write(json.dumps(result) + "\\n")
"""


class SegmentSink:
    """A UDP socket standing in for the X-Ray daemon; keeps every datagram it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.datagrams: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def __enter__(self) -> SegmentSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self.datagrams.append(self.sock.recv(65536))
            except TimeoutError:
                continue

    def wait_for(self, marker: bytes, seconds: float = 5.0) -> None:
        deadline = time.monotonic() + seconds
        while not any(marker in d for d in self.datagrams) and time.monotonic() < deadline:
            time.sleep(0.05)

    def segments(self) -> list[dict[str, Any]]:
        docs = []
        for datagram in self.datagrams:
            header, _, body = datagram.decode().partition("\n")
            assert json.loads(header)["format"] == "json"
            docs.append(json.loads(body))
        return docs


def test_trace_segments_hold_no_token(hygiene: Hygiene) -> None:
    """The handler in its own process with the X-Ray SDK on: Powertools Tracer and the patched
    boto3 and httpx emit real segment documents to a UDP "daemon" that the test reads."""
    vital = hygiene.stack.vital
    files: dict[str, dict[int, dict[str, Any]]] = {}
    # One chunk each (one provider, fewer rows than CHUNK_SIZE); the stand-in's scripts pop one
    # entry per request: 503 twice (retried, then given up), two dropped connections (the
    # answer lost: looked up, sent once more, lost again), 401, 403.
    for name, start in (("5xx", 10_000), ("drop", 11_000), ("401", 12_000), ("403", 13_000)):
        rows = [{**corpus_row(n), "provider": "oura"} for n in range(start, start + 40)]
        files[f"incoming/trace/{name}.jsonl"] = put_corpus(
            hygiene, f"incoming/trace/{name}.jsonl", rows
        )
    vital.drop_script = [False, False, True, True]
    vital.status_script = [503, 503, 401, 403]
    # Invalid rows of every shape, and Vital's 422s, pointed and not.
    body, values = mixed_jsonl(80_000, corpus(600, 30_000))
    valid = valid_lines(body)
    hygiene.put("incoming/trace/mixed.jsonl", body, values)
    hygiene.secrets.add(*stray_tokens(80_000, 12))
    files["incoming/trace/mixed.jsonl"] = valid
    users = [valid[line]["user_id"] for line in sorted(valid)]
    vital.add_known_users(*known(valid[line] for line in sorted(valid)))
    vital.reject_user_ids = set(users[100::150])
    vital.reject_unattributed = {users[377]}
    # A file that breaks half-way.
    rows = corpus(600, 20_000)
    vital.add_known_users(*known(rows))
    hygiene.put("incoming/trace/broken.jsonl.gz", corrupt_gzip(encode_rows(rows, "jsonl")), rows)
    files["incoming/trace/broken.jsonl.gz"] = by_line(rows)
    event = s3_event(hygiene.stack.bucket, list(files))

    with SegmentSink() as sink:
        env = {
            **os.environ,
            "CHUNK_SIZE": "100",
            "MAX_ROW_BYTES": str(MAX_ROW_BYTES),
            "MAX_ATTEMPTS": "2",
            "POWERTOOLS_LOG_LEVEL": "DEBUG",
            "POWERTOOLS_TRACE_DISABLED": "false",
            "AWS_LAMBDA_FUNCTION_NAME": "bulk-import",
            "LAMBDA_TASK_ROOT": str(ROOT / "functions"),
            "_X_AMZN_TRACE_ID": (
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
            ),
            "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR",
            "AWS_XRAY_DAEMON_ADDRESS": sink.address,
        }
        child = subprocess.run(  # noqa: S603 - our own code, fixed arguments
            [sys.executable, "-c", _CHILD, json.dumps(event), "900"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        sink.wait_for(b"## lambda_handler")

    assert child.returncode == 0, child.stderr[-3000:]
    segments = sink.segments()
    # The capture is real: the handler's subsegment, S3 calls and every bulk_import attempt.
    names = Counter(s["name"] for s in segments)
    assert names["## lambda_handler"] == 1, names
    assert names["s3"] > 10, names
    posts = [s for s in segments if s.get("http", {}).get("request", {}).get("method") == "POST"]
    assert len(posts) == len(vital.bulk_import_requests()) > 10
    assert any(s.get("cause") for s in segments)  # errors are recorded, messages included
    leaks = {
        "segments": hygiene.secrets.find("\n".join(json.dumps(s) for s in segments)),
        "child stdout (logs, metrics)": hygiene.secrets.find(child.stdout),
        "child stderr": hygiene.secrets.find(child.stderr),
    }
    assert not any(leaks.values()), {k: v[:5] for k, v in leaks.items() if v}
    manifests = hygiene.verify(files, in_process=False)
    errors = {m["source"]["key"]: (m["error"] or {}).get("type") for m in manifests}
    assert errors == {
        "incoming/trace/5xx.jsonl": None,
        "incoming/trace/drop.jsonl": None,
        "incoming/trace/401.jsonl": "ImportAborted",
        "incoming/trace/403.jsonl": "ImportAborted",
        "incoming/trace/mixed.jsonl": None,
        "incoming/trace/broken.jsonl.gz": "MalformedFile",
    }


def test_traced_functions_never_capture_responses() -> None:
    """Every ``tracer.capture_*`` in the package passes ``capture_response=False``: a traced
    function that returns rows would otherwise put them in the trace."""
    uses = []
    for path in sorted((ROOT / "functions" / "bulk_import").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("capture_")
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "tracer"
            ):
                flags = {k.arg: k.value for k in node.keywords}
                value = flags.get("capture_response")
                uses.append((path.name, node.lineno))
                assert isinstance(value, ast.Constant), (path.name, node.lineno)
                assert value.value is False, (path.name, node.lineno)
    assert uses  # the handler is traced
