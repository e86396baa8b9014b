"""Chunks to Vital: numbered in order, leased and recorded as handed over before they go,
posted by a thread pool, and their answers taken in on the reading thread.

Only the POSTs run on worker threads, at most ``MAX_CONCURRENCY`` at a time, with as many more
waiting ready behind them while Vital answers fast (``run/handoff.py``). A full pool blocks
reading (back-pressure), so memory stays bounded by the chunks in flight, whatever the file's
size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

from bulk_import.errors import FileError, TransientError
from bulk_import.model import (
    BulkImportResponse,
    BulkOp,
    BulkOpPage,
    ChunkRecord,
    Outcome,
    SourceRef,
    UserProvider,
    UserProviders,
    ValidationErrorBody,
    ValidationIssue,
)
from bulk_import.run.handoff import Handoffs
from bulk_import.run.ledger import Replay
from bulk_import.vital import ChunkReport, Hold, VitalClient, start_seconds

if TYPE_CHECKING:
    from bulk_import.ingest import Chunk
    from bulk_import.run.context import RunContext
    from bulk_import.vital.settle import BulkOpListing

# Checkpoints are spaced at least about this far apart when chunks go out quickly.
CHECKPOINT_SECONDS = 2.0


# Models first used on the posting threads: answers, chunk records, 422 bodies, the object's
# description, the lookups that settle chunks in doubt. pydantic builds a deferred model on
# first use without a lock, and two threads at it at once can find the class half built
# (pydantic#13438): they are built here, on the reading thread, before any posting thread.
POSTING_THREAD_MODELS = (
    BulkImportResponse,
    BulkOp,
    BulkOpPage,
    ChunkRecord,
    UserProvider,
    UserProviders,
    SourceRef,
    ValidationErrorBody,
    ValidationIssue,
)


def build_posting_thread_models() -> None:
    """Build the models the posting threads use; cheap once built (every later invocation)."""
    for model in POSTING_THREAD_MODELS:
        model.model_rebuild()


class DeadlineReached(Exception):
    """Too little Lambda time is left to send more: the rest goes to a fresh invocation."""


class Dispatcher:
    """Sends a run's chunks and takes in their answers, in the order they were sent."""

    def __init__(self, ctx: RunContext) -> None:
        settings = ctx.settings
        build_posting_thread_models()
        self.ctx = ctx
        self.next_seq = 0
        # The first chunk a posting thread held back for lack of time (the rest go after it).
        self.deferred: int | None = None
        self.client: VitalClient | None = None
        self.executor = ThreadPoolExecutor(
            max_workers=settings.max_concurrency, thread_name_prefix="vital-post"
        )
        # Nearly every run needs the client: the API key is a Secrets Manager call and the TLS
        # context loads CA certificates without holding the GIL, ~50 ms that overlap S3's
        # answers. A failure surfaces where the client is first needed.
        self.client_future: Future[VitalClient] | None = self.executor.submit(_new_client, ctx)
        self.in_flight: dict[Future[ChunkReport], tuple[int, Chunk]] = {}
        # Cut and not handed to a posting thread yet, or handed and not sent because it failed
        # (its lease could not be saved): ``send``, and ``report_unsent`` if the run stops.
        self.unsent: deque[Chunk] = deque()
        self.submitted: Chunk | None = None  # the last chunk handed to a posting thread
        # The invocation's first request: the chunks after it wait for its answer (``_gate``).
        self.probe: Future[ChunkReport] | None = None
        self.posted_here = 0
        self.lease_step = settings.checkpoint_every_chunks or 2 * settings.max_concurrency
        # Time kept back: SAFETY_MARGIN_SECONDS, and never less than the client needs to start
        # a request (below that it refuses, and the chunk would end errored, not deferred).
        self.margin = max(settings.safety_margin_seconds, start_seconds(settings))
        self.last_lease_at = ctx.wiring.clock()
        self.last_lease_seq = 0
        self.handoffs = Handoffs(ctx, settings.max_concurrency)
        self.ops: BulkOpListing | None = None  # Vital's bulk ops, for chunks in doubt

    def submit[T](self, work: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``work`` on a posting thread (opening the object while the checkpoint is read)."""
        return self.executor.submit(work, *args)

    def time_left(self) -> bool:
        return self.ctx.wiring.remaining_seconds() >= self.margin

    def lease_so_far(self) -> int:
        """The chunks that may have been sent: none from ``next_seq`` on, nor any
        chunk from the first one the posting threads held back for lack of time."""
        return self.next_seq if self.deferred is None else min(self.next_seq, self.deferred)

    def send(self, chunks: Iterable[Chunk]) -> None:
        """Dispatch chunks in order. If one fails before a posting thread has it (its lease
        could not be saved, say), it and those after it stay in ``unsent``: a retry rebuilds
        them, or ``report_unsent`` gives their rows an outcome."""
        self.unsent.extend(chunks)
        while self.unsent:
            chunk = self.unsent.popleft()
            try:
                self._dispatch(chunk)
            except BaseException:
                if self.submitted is not chunk:
                    self.unsent.appendleft(chunk)
                raise

    def _dispatch(self, chunk: Chunk) -> None:
        """Route a new chunk by what earlier invocations did with the same chunk number."""
        ctx, ledger = self.ctx, self.ctx.ledger
        seq = self.next_seq
        self.next_seq += 1
        if ledger.replay(seq) is not Replay.NEW and self._replayed(seq, chunk):
            return
        if not self._may_send(seq, chunk):
            return
        if ctx.dry_run:  # validated and cut as it would be sent; never sent
            ledger.write_chunk(chunk, Outcome.VALID, "")
            ledger.settle(seq)
            return
        client = self._client_or_stop(seq, chunk)
        if client is None:
            return
        # While Vital answers fast, up to MAX_CONCURRENCY chunks wait in the posting threads'
        # queue behind the ones being sent: a thread that is answered starts the next request at
        # once, while this thread goes on reading (also while the invocation's first chunk is
        # out: see ``_gate``). None wait when requests are slow enough for a hand-off record
        # each, nor before the first answer tells the pace (``run/handoff.py``).
        self.collect(block=False)
        while len(self.in_flight) >= self.handoffs.capacity():
            self.collect()
        # A chunk the posting threads deferred was held back by this same check (``_gate``).
        if self.posted_here and not self.time_left():
            self.next_seq = seq  # not numbered yet: a later invocation rebuilds and sends it
            raise DeadlineReached
        if not self._may_send(seq, chunk):
            return
        try:
            if seq >= ledger.lease:
                # Make the lease durable before sending past it, so a crash cannot hide a send.
                # The checkpoint also bounds the hand-offs, as the record it spares would.
                below = self.handoffs.allowance(seq, len(self.in_flight))
                ctx.save_checkpoint(
                    next_segment=ctx.ref.segment, lease=seq + self._step(seq), handed=below
                )
                self.handoffs.covered(below)
            self.handoffs.before(seq, len(self.in_flight))
        except Exception:
            self.next_seq = seq  # not sent: a retry rebuilds this chunk and sends it
            raise
        self._submit(seq, chunk, client)

    def _replayed(self, seq: int, chunk: Chunk) -> bool:
        """A chunk an earlier invocation got to: skipped, its answer written again from the
        hand-off record, or settled by asking Vital. False: send it as new."""
        ledger = self.ctx.ledger
        replayed = ledger.replay(seq)
        if replayed is Replay.SETTLED:
            ledger.settle(seq)  # outcomes already stored
            return True
        if replayed is Replay.ANSWERED:
            done = ledger.write_answered(seq, chunk)
            if done is not None:
                self.handoffs.done[seq] = done  # for this run's records, until a checkpoint
                ledger.settle(seq)
                return True
            # Not the rows the record speaks of: ask Vital.
        # Only after a crash: not loaded on a cold start that has nothing in doubt.
        from bulk_import.run.settlement import settle_in_doubt  # noqa: PLC0415

        settle_in_doubt(self, seq, chunk)
        return True

    def _may_send(self, seq: int, chunk: Chunk) -> bool:
        """False (the chunk reported, not sent) once the run has stopped."""
        if not self.ctx.stop.stopped:
            return True
        self.ctx.ledger.write_chunk(chunk, Outcome.ERRORED, self.ctx.stop.not_sent())
        self.ctx.ledger.settle(seq)
        return False

    def _client_or_stop(self, seq: int, chunk: Chunk) -> VitalClient | None:
        try:
            return self.vital()
        except FileError as exc:
            self.ctx.stop.stop(exc)
            self._may_send(seq, chunk)
            return None
        except TransientError:
            self.next_seq = seq  # not sent: Lambda's retry rebuilds this chunk and sends it
            raise

    def _submit(self, seq: int, chunk: Chunk, client: VitalClient) -> None:
        # Every invocation sends at least its first chunk, so each one moves the file on.
        gate = self._gate if self.probe is not None else None
        wiring = self.ctx.wiring
        future = self.executor.submit(
            wiring.post_chunk,
            client,
            chunk,
            self.ctx.settings.wait_for_completion,
            gate,
            probe=gate is None,
        )
        self.submitted = chunk
        future.add_done_callback(self.note_refusal)
        self.probe = self.probe or future
        self.in_flight[future] = (seq, chunk)
        self.posted_here += 1

    def _step(self, seq: int) -> int:
        """Chunks until the next checkpoint: the configured step, or ~CHECKPOINT_SECONDS' worth.

        Fast runs would otherwise write a checkpoint every few milliseconds; a crash leaves at
        most this many chunks in doubt.
        """
        now = self.ctx.wiring.clock()
        elapsed = now - self.last_lease_at
        sent = seq - self.last_lease_seq
        self.last_lease_at, self.last_lease_seq = now, seq
        if self.ctx.settings.checkpoint_every_chunks or elapsed <= 0 or sent <= 0:
            return self.lease_step
        rate = sent / elapsed
        return max(self.lease_step, min(int(rate * CHECKPOINT_SECONDS), 64 * self.lease_step))

    def vital(self) -> VitalClient:
        """The Vital client, once built (raises what building it raised)."""
        if self.client is None:
            if self.client_future is None:
                self.client_future = self.executor.submit(_new_client, self.ctx)
            self.client = self.client_future.result()
        return self.client

    def _gate(self) -> Hold | None:
        """Asked on a posting thread as a chunk's request is about to start (it may have waited
        in the queue): the same checks as ``_dispatch`` made when it handed the chunk over.

        Every chunk after the invocation's first (the probe) first waits for the probe's answer:
        a rejected key or disabled Link Migration then costs one request, not MAX_CONCURRENCY of
        them. The reading thread goes on meanwhile, so the threads start together once it is in.
        The probe is never gated and went into the queue first, so it cannot wait on a gate.
        """
        probe = self.probe
        if probe is None:  # gates are only given after the probe: nothing to wait for
            return None
        if probe.exception() is not None or probe.result().fatal is not None:
            return Hold.STOPPED  # as the reading thread will have it once it takes the answer
        return held(self)

    def note_refusal(self, future: Future[ChunkReport]) -> None:
        """Run on the posting thread that got the answer: a refused key or Link Migration holds
        back every chunk that has not started yet (``_gate``), without waiting for the reading
        thread to take the answer in; each of them would be sent and refused in turn."""
        if future.cancelled() or future.exception() is not None:
            return
        fatal = future.result().fatal
        if fatal is not None and self.ctx.stop.refusal is None:
            self.ctx.stop.refusal = fatal

    def collect(self, *, block: bool = True) -> None:
        """Take in answered chunks: at least one (waiting for it if need be) or, with ``block``
        False, those already answered."""
        if not self.in_flight:
            return
        if block:
            wait(self.in_flight, return_when=FIRST_COMPLETED)
        done = [future for future in self.in_flight if future.done()]
        for future in done:
            seq, chunk = self.in_flight.pop(future)
            if self._take_answer(seq, chunk, future):
                self.ctx.ledger.settle(seq)

    def _take_answer(self, seq: int, chunk: Chunk, future: Future[ChunkReport]) -> bool:
        """Record a chunk's answer; False when it was held back for a later invocation."""
        ledger, stop = self.ctx.ledger, self.ctx.stop
        try:
            report = future.result()
        except Exception as exc:  # noqa: BLE001 - a bug in a worker must not lose the file
            stop.internal_error("unexpected error posting a chunk", exc)
            detail = "in doubt: the function failed while sending this chunk; see retry.jsonl"
            ledger.write_chunk(chunk, Outcome.ERRORED, detail)
            return True
        if report.held is Hold.DEFERRED:
            # Neither sent nor settled: the checkpoint's lease starts at the first one.
            self.deferred = seq if self.deferred is None else min(self.deferred, seq)
            return False
        recorded = ledger.outcomes.written
        try:
            self._absorb(report)
            self.handoffs.answered(seq, report)
        except Exception as exc:  # noqa: BLE001 - nor a bug in recording its answer
            stop.internal_error("unexpected error recording a chunk's answer", exc)
            if ledger.outcomes.written == recorded:  # else the count check at the end tells
                detail = (
                    "in doubt: the function failed while recording Vital's answer to this "
                    "chunk; see retry.jsonl"
                )
                ledger.write_chunk(chunk, Outcome.ERRORED, detail)
        return True

    def _absorb(self, report: ChunkReport) -> None:
        ledger, stop = self.ctx.ledger, self.ctx.stop
        if report.held is Hold.STOPPED:  # handed over before the run stopped, never sent
            if stop.reason is None and stop.refusal is not None:
                stop.refused(stop.refusal)  # held back by a refusal not taken in yet
            ledger.write_chunk(report.chunk, Outcome.ERRORED, stop.not_sent())
            return
        ledger.chunk_records.extend(report.records)
        ledger.in_doubt += report.in_doubt
        if report.shared is not None:
            ledger.write_chunk(report.chunk, *report.shared)
        else:
            ledger.write(report.decided, report.chunk)
        ledger.chunks_done += 1
        if report.fatal is not None and stop.reason is None:
            stop.refused(report.fatal)
        stop.check_threshold(
            ledger.tally, ledger.in_doubt, self.ctx.settings.failure_threshold_percent
        )

    def drain(self) -> None:
        while self.in_flight:
            self.collect()

    def finish(self) -> None:
        """Every answer in, the posting threads stopped; a stop reason becomes the error."""
        try:
            self.drain()
        finally:
            self.executor.shutdown(wait=True)
            self.ctx.stop.settle_error()

    def close(self) -> None:
        """Release the threads and the client, now or once the client is built."""
        self.executor.shutdown(wait=False)
        self.handoffs.close()
        if self.client_future is not None:
            self.client_future.add_done_callback(_close_client)


def held(dispatcher: Dispatcher) -> Hold | None:
    """Whether a request about to start on a posting thread must not go (the run has stopped)
    or must wait for a later invocation (too little time left)."""
    stop = dispatcher.ctx.stop
    if stop.reason is not None or stop.refusal is not None:
        return Hold.STOPPED
    if not dispatcher.time_left():
        return Hold.DEFERRED
    return None


def _new_client(ctx: RunContext) -> VitalClient:
    wiring = ctx.wiring
    return VitalClient(
        ctx.settings,
        wiring.api_key(),
        wiring.remaining_seconds,
        wiring.transport,
        clock=wiring.clock,
        sleep=wiring.sleep,
    )


def _close_client(future: Future[VitalClient]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
