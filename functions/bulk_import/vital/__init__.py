"""Talking to Vital: the pooled httpx client with its retry policy and circuit breaker, posting
one chunk and mapping the answer back to rows, and the bulk-ops lookups."""

from bulk_import.vital.client import (
    CallStats,
    CircuitBreaker,
    PostResult,
    VitalClient,
    parse_time,
    start_seconds,
)
from bulk_import.vital.posting import ChunkReport, Hold, post_chunk

__all__ = [
    "CallStats",
    "ChunkReport",
    "CircuitBreaker",
    "Hold",
    "PostResult",
    "VitalClient",
    "parse_time",
    "post_chunk",
    "start_seconds",
]
