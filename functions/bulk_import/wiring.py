"""Every collaborator of an invocation, built from Settings in one place.

This is the seam tests use: ``build(settings, context, **overrides)`` takes a fake for any part
(a checkpoint store that fails its third write, a transport that holds a request, a secrets
provider that does not answer), and ``handler.make_handler(build=...)`` runs the real handler
with them. Nothing else in the package constructs a store, a writer or the S3 client; the SQS
and SNS clients, used at most once per file, are made on first use in ``storage/aws.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic_core import to_json

from bulk_import.ingest.jsonl import JSONL_BLOCK_BYTES, RESUME_EVERY_LINES
from bulk_import.storage import aws
from bulk_import.storage.checkpoint_store import CheckpointStore
from bulk_import.storage.idempotency import Work, once_per_ref
from bulk_import.storage.results import ResultWriter
from bulk_import.storage.spool import SPOOL_KEEP_BYTES
from bulk_import.vital import ChunkReport, Hold, VitalClient, post_chunk

if TYPE_CHECKING:
    from typing import Protocol

    import httpx
    from aws_lambda_powertools.utilities.parameters import SecretsProvider
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_s3.client import S3Client

    from bulk_import.config import Settings
    from bulk_import.ingest import Chunk
    from bulk_import.model import ContinuationMessage, WellFormedRow

    class PostChunk(Protocol):
        """``vital.post_chunk``'s shape: post one chunk unless ``gate`` holds it back."""

        def __call__(
            self,
            client: VitalClient,
            chunk: Chunk,
            wait_for_completion: bool,
            gate: Callable[[], Hold | None] | None = ...,
            *,
            probe: bool = ...,
        ) -> ChunkReport: ...

    class StoreFactory(Protocol):
        """``CheckpointStore``'s constructor: one store per run, named by the run's token."""

        def __call__(
            self, s3: S3Client, bucket: str, results_prefix: str, retry_prefix: str, run: str
        ) -> CheckpointStore: ...


# Lines spooled since the last checkpoint that make the reading thread take one: with the
# spool's keep limit, /tmp holds at most ~200 MB (Lambda's default is 512 MB).
UNSAVED_SPOOL_BYTES = 32 * 1024 * 1024
# Resume points are stored this far apart (decompressed): a resume reads at most about this
# much, or RESUME_EVERY_LINES lines, again.
RESUME_POINT_BYTES = 16 * 1024 * 1024


class Tunables(NamedTuple):
    """Thresholds that trade S3 writes against memory, /tmp and recovery; tests scale them."""

    unsaved_spool_bytes: int = UNSAVED_SPOOL_BYTES
    spool_keep_bytes: int = SPOOL_KEEP_BYTES
    # JSONL is read in blocks this big: the deadline and checkpoint checks come between blocks.
    jsonl_block_bytes: int = JSONL_BLOCK_BYTES
    # JSONL chunks close every this many lines: where a later invocation can start reading.
    resume_every_lines: int = RESUME_EVERY_LINES
    # Of those places, one is stored as a resume point once reading has gone this far past
    # the last (a dedupe part and, for gzip, a 32 KiB access point each).
    resume_point_bytes: int = RESUME_POINT_BYTES
    # SQS's longest delay, and the longest an idempotency hold can last: it ends with the
    # holding invocation's timeout (900 s at most).
    recheck_delay_seconds: int = aws.RECHECK_DELAY_SECONDS


class Wiring(NamedTuple):
    """What one invocation talks through. Built by ``build``; immutable, so a run cannot rewire.

    A named tuple, like the package's other immutable records: its class builds several times
    faster than a frozen dataclass's, and every cold start pays for each class defined.
    """

    settings: Settings
    s3: S3Client
    request_id: str
    remaining_seconds: Callable[[], float]
    secrets: Callable[[], SecretsProvider]
    guard: Callable[[Work], Work]
    transport: httpx.BaseTransport | None = None
    new_store: StoreFactory = CheckpointStore
    results: ResultWriter | None = None
    post_chunk: PostChunk = post_chunk
    # What the JSONL hot path serialises a well-formed row's recipe with.
    serialise: Callable[[WellFormedRow], bytes] = to_json
    tunables: Tunables = Tunables()
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def api_key(self) -> str:
        """The Vital API key, from Secrets Manager (cached by Powertools for its max age)."""
        settings = self.settings
        return aws.vital_api_key(
            settings.vital_api_key_secret, settings.secret_max_age_seconds, self.secrets()
        )

    def writer(self) -> ResultWriter:
        return self.results or ResultWriter(self.s3, self.tunables.spool_keep_bytes)

    def hand_off(self, message: ContinuationMessage, delay_seconds: int = 0) -> None:
        """Queue the rest of a file (or a second look) for a fresh invocation."""
        aws.hand_off(message, self.settings.continuation_queue_url, delay_seconds)

    def announce(self, summary: dict[str, Any]) -> None:
        """Publish a finished file's summary when NOTIFY_TOPIC_ARN is set."""
        if self.settings.notify_topic_arn:
            aws.announce(self.settings.notify_topic_arn, summary)


def build(settings: Settings, context: LambdaContext, **overrides: Any) -> Wiring:
    """The collaborators of one invocation; ``overrides`` replace any of them (tests)."""
    wiring = Wiring(
        settings=settings,
        s3=overrides.pop("s3", None) or aws.s3_client(),
        request_id=context.aws_request_id,
        remaining_seconds=lambda: context.get_remaining_time_in_millis() / 1000,
        secrets=aws.secrets_provider,
        guard=lambda work: once_per_ref(work, settings.idempotency_table, context),
    )
    return wiring._replace(**overrides) if overrides else wiring
