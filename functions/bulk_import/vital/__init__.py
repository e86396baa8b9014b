"""Talking to Vital: the pooled httpx client with its retry policy and circuit breaker, posting
one chunk and mapping the answer back to rows, the bulk-ops and user-provider lookups, and the
settlement of chunks in doubt."""

from bulk_import.vital.breaker import CircuitBreaker
from bulk_import.vital.bulk_ops import (
    BULK_OP_FAILED,
    BULK_OP_MAX_WAIT_SECONDS,
    BULK_OP_POLL_SECONDS,
    BULK_OP_SKEW,
    parse_time,
    wait_for_bulk_ops,
)
from bulk_import.vital.client import CallStats, PostResult, VitalClient
from bulk_import.vital.lookups import user_providers
from bulk_import.vital.posting import ChunkReport, Hold, post_chunk
from bulk_import.vital.retry import start_seconds

__all__ = [
    "BULK_OP_FAILED",
    "BULK_OP_MAX_WAIT_SECONDS",
    "BULK_OP_POLL_SECONDS",
    "BULK_OP_SKEW",
    "CallStats",
    "ChunkReport",
    "CircuitBreaker",
    "Hold",
    "PostResult",
    "VitalClient",
    "parse_time",
    "post_chunk",
    "start_seconds",
    "user_providers",
    "wait_for_bulk_ops",
]
