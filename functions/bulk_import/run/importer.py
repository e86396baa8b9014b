"""One file, start to finish: resume → intake → dispatch → finish.

Exactly-once across crashes, retries and continuations rests on one fact: reading the same file
with the same settings yields the same chunks in the same order. The ledger's checkpoint
records how many chunks may have been sent (the lease) and which have their outcomes stored; a
later invocation replays the file (JSONL and CSV from the newest resume point), skips what is
settled, settles unsettled chunks under the lease by asking Vital, and posts the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from bulk_import.errors import FileError, ImportAborted, Superseded, TransientError
from bulk_import.observability import logger, tracer
from bulk_import.run import finish, resume
from bulk_import.run.context import FileResult, RunContext
from bulk_import.run.dispatch import DeadlineReached, Dispatcher
from bulk_import.run.intake import Intake
from bulk_import.run.tuning import tuned_interpreter

if TYPE_CHECKING:
    from bulk_import.model import ObjectRef
    from bulk_import.wiring import Wiring


# capture_response=False: a result must never be copied into a trace. Worker threads are not
# traced (X-Ray's context is per thread); their HTTP calls show under this subsegment's time.
@tracer.capture_method(capture_response=False)
def import_object(ref: ObjectRef, wiring: Wiring) -> FileResult:
    tracer.put_annotation(key="segment", value=str(ref.segment))
    tracer.put_metadata(key="object", value={"bucket": ref.bucket, "key": ref.key})
    with tuned_interpreter():
        return Run(ref, wiring).execute()


class Run:
    """The steps of one invocation's import of one object, in order."""

    def __init__(self, ref: ObjectRef, wiring: Wiring) -> None:
        self.ctx = RunContext(ref, wiring)
        self.dispatcher = Dispatcher(self.ctx)
        self.intake = Intake(self.ctx, self.dispatcher)

    def execute(self) -> FileResult:
        ctx = self.ctx
        try:
            skipped = resume.prepare(ctx)
            if skipped is not None:
                return skipped
            return self._import()
        except Superseded as exc:
            return self._superseded(exc)
        finally:
            ctx.ledger.close()
            self.intake.close()
            self.dispatcher.close()

    def _import(self) -> FileResult:
        ctx, dispatcher = self.ctx, self.dispatcher
        deadline = False
        try:
            if ctx.stop.error is None:
                self.intake.read()
        except FileError as exc:
            # Rows already chunked are not sent after a file error: reported, and in retry.jsonl.
            ctx.stop.fail(exc)
            self.intake.report_unsent()
        except DeadlineReached:
            deadline = True
        except Superseded:
            raise  # not this run's to finish (``execute``)
        except TransientError:
            # Secrets Manager did not answer: checkpointed, then raised for a retry.
            self._checkpoint_for_retry()
            raise
        except (BotoCoreError, ClientError) as exc:
            self._checkpoint_for_retry()
            raise TransientError(f"S3 failed while reading ({type(exc).__name__})") from exc
        except Exception as exc:  # noqa: BLE001 - a bug must not send the file into retries
            ctx.stop.internal_error("unexpected error", exc)
            # Rows already chunked still get an outcome (errored, in retry.jsonl).
            self.intake.report_unsent()
        if deadline:
            dispatcher.drain()
            return self._hand_on()
        dispatcher.finish()
        if dispatcher.deferred is not None:  # the posting threads ran out of time for some
            return self._hand_on()
        return finish.finalise(ctx, dispatcher)

    def _checkpoint_for_retry(self) -> None:
        """Every answer in and stored, so that Lambda's retry resumes from here."""
        self.dispatcher.drain()
        lease = self.dispatcher.lease_so_far()
        self.ctx.save_checkpoint(next_segment=self.ctx.ref.segment, lease=lease)

    def _hand_on(self) -> FileResult:
        """Checkpoint and name the next segment: a fresh invocation goes on from here."""
        ctx, dispatcher = self.ctx, self.dispatcher
        ctx.save_checkpoint(next_segment=ctx.ref.segment + 1, lease=dispatcher.lease_so_far())
        nxt = ctx.next_ref(ctx.ref.segment + 1)
        logger.info(
            "time is running out; handing the rest to a fresh invocation",
            extra={"lines_done": ctx.progress.line, "next_segment": nxt.segment},
        )
        stats = dispatcher.client.stats if dispatcher.client else None
        return FileResult(ctx.ref, ctx.manifest_key, call_stats=stats, continuation=nxt)

    def _superseded(self, exc: Superseded) -> FileResult:
        """Another import took this key over: send nothing more and write no results (they are
        the other import's to write). Chunks already out finish; those waiting are held back."""
        ctx = self.ctx
        ctx.stop.stop(ImportAborted(str(exc)))
        logger.warning(
            "another import took this key over; this one stops", extra={"line": ctx.progress.line}
        )
        self.dispatcher.drain()
        # Parts stored for a checkpoint that then lost are no one's (retry parts hold tokens);
        # those of the checkpoints it wrote are the other import's to keep or delete, as are
        # any the checkpoint now stored names (the other import may have resumed from this
        # run's last write, whose answer this run never saw).
        cp = ctx.ledger.checkpoint
        listed = set(cp.outcome_parts + cp.retry_parts) if cp is not None else set()
        listed |= ctx.store.named_parts()
        orphans = [k for k in ctx.ledger.all_parts() if k not in listed]
        ctx.store.delete_parts(orphans)
        if exc.newer is not None:
            resume.leave_record(ctx, finish.superseded_here(ctx, exc.newer))
        return resume.skip(ctx, str(exc))
