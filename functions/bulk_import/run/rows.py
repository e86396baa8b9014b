"""Where each row read ends up: rejected or a duplicate (its outcome to the ledger), or in a
chunk the dispatcher sends. Rows come in line order, from the reading thread."""

from __future__ import annotations

import operator
from itertools import repeat
from typing import TYPE_CHECKING

from bulk_import import ingest
from bulk_import.model import Outcome, RowOutcome, WellFormedRow
from bulk_import.redaction import redact_text

if TYPE_CHECKING:
    from bulk_import.run.context import RunContext
    from bulk_import.run.dispatch import Dispatcher

# PendingRow(...) runs a Python-level __new__; tuple.__new__ builds the same named tuple in C.
_pending = tuple.__new__
_USER_ID = operator.itemgetter("user_id")


class Rows:
    """Deduplicates valid rows and chunks them; writes the outcomes of the others."""

    def __init__(self, ctx: RunContext, dispatcher: Dispatcher) -> None:
        self.ctx = ctx
        self.dispatcher = dispatcher
        self.providers = providers = ctx.settings.providers
        self.seen = ingest.Dedupe()
        self.chunker = ingest.Chunker(
            ctx.settings.chunk_size, ctx.settings.max_body_bytes, providers
        )
        # Rows rejected from the file's start, those of a resumed run's earlier invocations too
        # (its tally counts Vital's rejections as well): the rejection threshold's count.
        self.rejected = 0

    def reject(
        self, line: int, data: dict[str, object] | None, default: str | None, reason: str
    ) -> None:
        self.rejected += 1
        ledger = self.ctx.ledger
        if line <= ledger.lines_done:
            return  # stored before the checkpoint this run resumed from
        provider = ingest.display_provider(data, default, self.providers)
        user_id = ingest.display_user_id(data)
        ledger.write([RowOutcome(line, user_id, provider, Outcome.REJECTED, redact_text(reason))])

    def accept(self, line: int, provider: str, user_id: str, payload: bytes) -> None:
        """A valid row, its recipe serialised (``payload``): a duplicate, or on to a chunk."""
        chunker = self.chunker
        if len(payload) > chunker.fits_any and not chunker.fits_alone(provider, payload):
            self._too_large(line, provider, user_id)
            return
        first = self.seen.claim(provider, user_id, line)
        if first is not None:
            self._duplicate(line, provider, user_id, first)
            return
        closed = chunker.add(provider, _pending(ingest.PendingRow, (line, user_id, payload)))
        if closed:
            self.dispatcher.send(closed)

    def accept_all(self, lines: list[int], providers: list[str], rows: list[WellFormedRow]) -> None:
        """``accept`` for a run of well-formed rows in line order, each step one call for all
        of them; the chunks they close are sent last (see ``run/intake.py``'s docstring)."""
        payloads = list(map(self.ctx.wiring.serialise, rows))
        user_ids = list(map(_USER_ID, rows))
        progress = self.ctx.progress
        if max(map(len, payloads)) > self.chunker.fits_any:  # some row may fit no request
            for line, provider, user_id, payload in zip(
                lines, providers, user_ids, payloads, strict=True
            ):
                progress.line = line - 1
                self.accept(line, provider, user_id, payload)
            return
        firsts = self.seen.claim_all(providers, user_ids, lines)
        pending = list(
            map(_pending, repeat(ingest.PendingRow), zip(lines, user_ids, payloads, strict=True))
        )
        if any(firsts):  # duplicates: reported, not chunked
            kept = [i for i, first in enumerate(firsts) if first is None]
            for line, provider, user_id, first in zip(
                lines, providers, user_ids, firsts, strict=True
            ):
                if first is not None:
                    self._duplicate(line, provider, user_id, first)
            providers = [providers[i] for i in kept]
            pending = [pending[i] for i in kept]
        progress.line = lines[-1]
        closed = self.chunker.add_all(providers, pending)
        if closed:
            self.dispatcher.send(closed)

    def _duplicate(self, line: int, provider: str, user_id: str, first: int) -> None:
        ledger = self.ctx.ledger
        if line > ledger.lines_done:
            detail = f"duplicate of line {first} (same provider and user_id); not sent"
            ledger.write([RowOutcome(line, user_id, provider, Outcome.DUPLICATE, detail)])

    def _too_large(self, line: int, provider: str, user_id: str) -> None:
        """A row no request can hold: a duplicate if its user came before, else rejected (and
        not claimed: a corrected copy of the row further down is not its duplicate)."""
        first = self.seen.first_line(provider, user_id)
        if first is not None:
            self._duplicate(line, provider, user_id, first)
            return
        self.reject(
            line,
            {"user_id": user_id},  # validated: shown, as for any rejected row with a valid id
            provider,
            "row is larger than one request may be "
            f"(MAX_BODY_BYTES={self.ctx.settings.max_body_bytes})",
        )
