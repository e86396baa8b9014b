"""Where an import of ``incoming/<path>`` keeps everything it writes, by key.

``results/<path>/manifest.json`` and ``outcomes.csv``, ``retry/<path>/retry.jsonl``; its state
under ``_state/``: the checkpoint and the part objects each invocation (``<run>``) stores.
Retry rows hold tokens, so they live under the retry prefix with its encryption and expiry.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bulk_import.config import Settings

MANIFEST_NAME = "manifest.json"
OUTCOMES_NAME = "outcomes.csv"
RETRY_NAME = "retry.jsonl"
VERIFICATION_NAME = "verification.csv"
STATE_DIR = "_state/"
CHECKPOINT_NAME = "checkpoint.json"
HANDOFF_NAME = "handoff.json"
# S3's limit on a key, in bytes of UTF-8.
S3_KEY_BYTES = 1024
PART_NAME = re.compile(
    r"(?:outcomes-[0-9a-f]{8}-\d{5}\.csv|retry-[0-9a-f]{8}-\d{5}\.jsonl"
    r"|seen-[0-9a-f]{8}-\d{5}\.bin|access-[0-9a-f]{8}-\d{5}\.bin)"
)


def results_prefix(key: str, incoming_prefix: str, results_prefix: str) -> str:
    """``incoming/a/b.csv`` → ``results/a/b.csv/``; keys outside incoming/ keep their full path."""
    path = key[len(incoming_prefix) :] if key.startswith(incoming_prefix) else key
    return f"{results_prefix}{path}/"


def outcome_part_key(results_prefix: str, run: str, n: int) -> str:
    return f"{results_prefix}{STATE_DIR}outcomes-{run}-{n:05d}.csv"


def retry_part_key(retry_prefix: str, run: str, n: int) -> str:
    return f"{retry_prefix}{STATE_DIR}retry-{run}-{n:05d}.jsonl"


def seen_part_key(results_prefix: str, run: str, n: int) -> str:
    """Users claimed up to a resume point (ids, no tokens)."""
    return f"{results_prefix}{STATE_DIR}seen-{run}-{n:05d}.bin"


def access_key(retry_prefix: str, run: str, n: int) -> str:
    """A gzip access point: it holds 32 KiB of the file, tokens too, so under the retry prefix."""
    return f"{retry_prefix}{STATE_DIR}access-{run}-{n:05d}.bin"


def longest_key(results_prefix: str, retry_prefix: str) -> int:
    """Bytes of the longest key an import under these prefixes writes: its part objects'
    (the results' own names are shorter)."""
    run = "0" * 8
    keys = (
        outcome_part_key(results_prefix, run, 1),
        retry_part_key(retry_prefix, run, 1),
        seen_part_key(results_prefix, run, 1),
        access_key(retry_prefix, run, 1),
    )
    return max(len(key.encode()) for key in keys)


def results_fit(key: str, settings: Settings) -> bool:
    """Whether S3 can hold the keys an import of ``key`` writes: a key near S3's limit of 1024
    bytes has results and part keys longer than that, which every write would fail on."""
    results = results_prefix(key, settings.incoming_prefix, settings.results_prefix)
    retry = results_prefix(key, settings.incoming_prefix, settings.retry_prefix)
    return longest_key(results, retry) <= S3_KEY_BYTES
