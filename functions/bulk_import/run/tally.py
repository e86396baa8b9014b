"""Outcome counts on the hot path: plain ints per (provider, outcome); pydantic at the edges."""

from __future__ import annotations

import operator
from collections import Counter
from collections.abc import Sequence

from bulk_import.model import COUNT_FIELD, Counts, Outcome, RowOutcome

_PROVIDER_AND_OUTCOME = operator.attrgetter("provider", "outcome")
_OUTCOME = operator.attrgetter("outcome")


class Tally:
    """Counts every outcome once; rows without a provider count in the totals only."""

    __slots__ = ("_by_provider", "_totals")

    def __init__(self) -> None:
        self._by_provider: Counter[tuple[str, Outcome]] = Counter()
        self._totals: Counter[Outcome] = Counter()

    def add(self, outcomes: Sequence[RowOutcome]) -> None:
        # Counter.update over C-level attribute getters: no Python code per row.
        self._by_provider.update(map(_PROVIDER_AND_OUTCOME, outcomes))
        self._totals.update(map(_OUTCOME, outcomes))

    def add_same(self, provider: str, outcome: Outcome, rows: int) -> None:
        """``rows`` rows of one provider with one outcome (a whole chunk's)."""
        if rows <= 0:
            return
        self._by_provider[provider, outcome] += rows
        self._totals[outcome] += rows

    def __getitem__(self, outcome: Outcome) -> int:
        return self._totals[outcome]

    def counts(self) -> Counts:
        return _counts(self._totals)

    def providers(self) -> dict[str, Counts]:
        per: dict[str, Counter[Outcome]] = {}
        for (provider, outcome), n in self._by_provider.items():
            if provider:
                per.setdefault(provider, Counter())[outcome] += n
        return {p: _counts(c) for p, c in sorted(per.items())}

    @classmethod
    def restore(cls, counts: Counts, providers: dict[str, Counts]) -> Tally:
        tally = cls()
        for outcome, field in COUNT_FIELD.items():
            total = getattr(counts, field)
            tally._totals[outcome] = total
            attributed = 0
            for provider, per in providers.items():
                n = getattr(per, field)
                tally._by_provider[provider, outcome] = n
                attributed += n
            tally._by_provider["", outcome] = total - attributed
        return tally


def _counts(counter: Counter[Outcome]) -> Counts:
    values = {field: counter[outcome] for outcome, field in COUNT_FIELD.items()}
    return Counts(rows=sum(values.values()), **values)
