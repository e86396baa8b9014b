"""Duplicate detection: the first row of a (provider, user_id) is sent, later ones are not."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from bulk_import.ingest.dedupe import Dedupe

USER = "6d7c1b4e-5a1f-4f7e-9f3e-2f1d8d9a0b11"


def test_given_a_user_claimed_once_when_claimed_again_then_the_first_line_is_returned() -> None:
    seen = Dedupe()
    assert seen.claim("oura", USER, 2) is None
    assert seen.claim("oura", USER, 7) == 2
    assert seen.claim("oura", USER, 9) == 2


def test_the_same_user_under_another_provider_is_not_a_duplicate() -> None:
    seen = Dedupe()
    assert seen.claim("oura", USER, 2) is None
    assert seen.claim("fitbit", USER, 3) is None


def test_looking_a_user_up_does_not_claim_it() -> None:
    seen = Dedupe()
    assert seen.first_line("oura", USER) is None
    assert seen.claim("oura", USER, 5) is None
    assert seen.first_line("oura", USER) == 5


@given(st.lists(st.tuples(st.sampled_from(["oura", "garmin"]), st.integers(0, 5)), max_size=40))
def test_exactly_the_first_row_of_each_pair_is_claimed(rows: list[tuple[str, int]]) -> None:
    seen = Dedupe()
    firsts: dict[tuple[str, int], int] = {}
    for line, (provider, n) in enumerate(rows, 1):
        user = str(uuid.UUID(int=n))
        expected = firsts.setdefault((provider, n), line)
        assert seen.claim(provider, user, line) == (None if expected == line else expected)
