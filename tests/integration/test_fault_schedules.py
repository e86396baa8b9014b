"""Random fault schedules through the real pipeline and the stand-in; the invariants must hold.

Each example is one file imported through the handler while the stand-in answers bulk_import
requests from a random schedule (200, 429, 500, 503, 502, a connection dropped before Vital takes
the chunk, an answer lost after it did), refuses random rows with
a 422 (pointed or not attributable), fails random unknown users, and maybe only enqueues. Chunk
size and concurrency are random too. stamina runs in testing mode: no real waits.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest
import stamina
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulk_import.vital.settle import UNKNOWN_USER_DETAIL as UNKNOWN
from local.standin import DEFAULT_API_KEY, StandinState
from tests.helpers import access_token, encode_rows, make_row, refresh_token
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FAULTS = st.sampled_from([200, 200, 429, 500, 502, 503, "drop", "lose"])
_example = itertools.count()


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    rows = draw(st.integers(min_value=1, max_value=30))
    indexes = st.integers(min_value=0, max_value=rows - 1)
    return {
        "rows": rows,
        "chunk_size": draw(st.integers(min_value=1, max_value=8)),
        "concurrency": draw(st.integers(min_value=1, max_value=4)),
        "schedule": draw(st.lists(FAULTS, max_size=16)),
        "pointed": draw(st.sets(indexes, max_size=3)),
        "unattributed": draw(st.sets(indexes, max_size=1)),
        "unknown": draw(st.sets(indexes, max_size=3)),
        "force_202": draw(st.booleans()),
        "providers": draw(st.sampled_from([("oura",), ("oura", "fitbit")])),
    }


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_random_fault_schedules_keep_the_invariants(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, scenario: dict[str, Any]
) -> None:
    vital = stack.vital
    vital.reset()  # the fixture resets once per test, not once per example
    monkeypatch.setenv("CHUNK_SIZE", str(scenario["chunk_size"]))
    monkeypatch.setenv("MAX_CONCURRENCY", str(scenario["concurrency"]))
    n = scenario["rows"]
    providers = scenario["providers"]
    rows = [make_row(i, provider=providers[i % len(providers)]) for i in range(n)]
    users = [r["user_id"] for r in rows]
    vital.add_known_users(*(u for i, u in enumerate(users) if i not in scenario["unknown"]))
    vital.reject_user_ids = {users[i] for i in scenario["pointed"]}
    vital.reject_unattributed = {users[i] for i in scenario["unattributed"]}
    vital.force_202 = scenario["force_202"]
    vital.op_complete_after_seconds = 0.0
    vital.drop_script = [item == "drop" for item in scenario["schedule"]]
    vital.lose_answer_script = [item == "lose" for item in scenario["schedule"]]
    vital.status_script = [
        0 if item == "lose" else int(item) for item in scenario["schedule"] if item != "drop"
    ]
    key = f"incoming/schedule-{next(_example)}.jsonl"
    stack.put(key, encode_rows(rows, "jsonl"))
    logs_before = len(stack.log_lines)
    stdout_before = len(stack.stdout)

    with stamina.set_testing(True, attempts=3):
        stack.import_keys(key)

    prefix = "results/" + key.removeprefix("incoming/") + "/"
    manifest = stack.manifest(prefix)
    outcomes = stack.outcomes(prefix)
    check_counts(manifest, outcomes, n)
    check_deliveries(vital, scenario, manifest, outcomes, users)
    written = "\n".join(
        [
            stack.get(prefix + "manifest.json").decode(),
            stack.get(prefix + "outcomes.csv").decode(),
            *stack.log_lines[logs_before:],
            *stack.stdout[stdout_before:],
        ]
    )
    assert DEFAULT_API_KEY not in written
    for i in range(n):
        assert access_token(i) not in written
        assert refresh_token(i) not in written


def check_counts(manifest: dict[str, Any], outcomes: list[dict[str, str]], n: int) -> None:
    """Counts add up; one outcome per line; the status follows from the counts."""
    counts = manifest["counts"]
    assert counts["rows"] == n == sum(v for k, v in counts.items() if k != "rows")
    assert sorted(int(o["line"]) for o in outcomes) == list(range(1, n + 1))
    tally = Counter(o["outcome"] for o in outcomes)
    for outcome in ("imported", "failed", "enqueued", "rejected", "errored"):
        assert tally[outcome] == counts[outcome]
    assert manifest["error"] is None
    bad = counts["rejected"] + counts["failed"] + counts["errored"]
    assert manifest["status"] == ("partial" if bad else "succeeded")


def check_deliveries(
    vital: StandinState,
    scenario: dict[str, Any],
    manifest: dict[str, Any],
    outcomes: list[dict[str, str]],
    users: list[str],
) -> None:
    """No row reached Vital twice, and Vital's acceptances are exactly what the outcomes say."""
    everything = vital.posted_connections()  # what Vital took, its answer delivered or lost
    twice = [pair for pair, count in Counter(everything).items() if count > 1]
    # A chunk whose answer was lost, of which Vital lists no user (it failed them all), looks
    # as if it never arrived and is sent once more: Vital fails those users again.
    assert all(users.index(user) in scenario["unknown"] for _, user in twice), twice
    by_pair = {(o["provider"], o["user_id"]): o["outcome"] for o in outcomes}
    accepted = {"imported", "failed", "enqueued"}
    # A user Vital does not know is failed by lookup whether or not its chunk arrived.
    unknown_users = {(o["provider"], o["user_id"]) for o in outcomes if o["detail"] == UNKNOWN}
    assert all(users.index(user) in scenario["unknown"] for _, user in unknown_users)
    assert {
        pair for pair, outcome in by_pair.items() if outcome in accepted
    } - unknown_users <= set(everything)
    # Rows Vital took are accepted, or errored in doubt when it could not tell.
    assert {by_pair[pair] for pair in everything} <= accepted | {"errored"}
    # Each row whose answer came back is reported as Vital answered; with no answer lost,
    # those are all of them.
    expected = {"enqueued"} if scenario["force_202"] else {"imported", "failed"}
    delivered = set(vital.posted_connections(include_undelivered=False))
    assert {by_pair[pair] for pair in delivered} <= expected
    if not any(r.answer_lost for r in vital.bulk_import_requests()):
        assert set(everything) == delivered
        assert delivered == {pair for pair, o in by_pair.items() if o in expected} - unknown_users
    by_line = {int(o["line"]): o for o in outcomes}
    for i, user in enumerate(users):
        outcome = by_line[i + 1]["outcome"]
        assert by_line[i + 1]["user_id"] == user
        refused = user in vital.reject_user_ids or user in vital.reject_unattributed
        if refused and by_line[i + 1]["detail"] != UNKNOWN:  # a 404 decides before a 422 would
            assert outcome in {"rejected", "errored"}, (i, outcome)
        else:
            assert outcome != "rejected", f"row {i + 1} rejected though Vital accepts it"
        if outcome == "imported":
            assert i not in scenario["unknown"]
        if outcome == "failed":
            assert i in scenario["unknown"]
    # Every request is accounted for in the chunk table.
    assert sum(c["attempts"] for c in manifest["chunks"]) == len(vital.bulk_import_requests())
