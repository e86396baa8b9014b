"""Deterministic, realistic connection files: JSONL rows of about 550 bytes each.

Rows look like real exports: a UUID Vital user id, an OAuth 2.0 access token shaped like a JWT
(or an OAuth 1.0 token for Garmin), a long refresh token (Garmin: the token secret), the
provider's own user id, an expiry in UNIX seconds and a few scopes. The same ``(rows, seed)``
always gives the same bytes, so runs on different days compare.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from dataclasses import dataclass

# Share of rows per provider (out of 10): a file exported from a multi-provider OAuth app.
PROVIDER_MIX: tuple[tuple[str, int], ...] = (
    ("oura", 4),
    ("fitbit", 3),
    ("garmin", 2),
    ("whoop_v2", 1),
)
SCOPES: dict[str, list[str] | None] = {
    "oura": ["email", "personal", "daily", "heartrate", "workout", "session", "spo2"],
    "fitbit": ["activity", "heartrate", "sleep", "profile", "weight", "oxygen_saturation"],
    "garmin": None,  # OAuth 1.0: no scopes on record
    "whoop_v2": ["read:recovery", "read:cycles", "read:sleep", "read:workout", "offline"],
}
OAUTH1_EXPIRES_AT = 2_147_483_647
DEFAULT_SEED = 20_251_126
_JWT_HEADER = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"  # {"alg":"RS256","typ":"JWT"}


@dataclass(frozen=True, slots=True)
class ConnectionFile:
    rows: int
    data: bytes
    user_ids: frozenset[str]
    chunks: dict[str, int]  # provider -> rows

    @property
    def mean_row_bytes(self) -> float:
        return len(self.data) / self.rows if self.rows else 0.0

    def chunk_count(self, chunk_size: int) -> int:
        return sum(-(-n // chunk_size) for n in self.chunks.values())


def _b64(rng: random.Random, n: int) -> str:
    return base64.urlsafe_b64encode(rng.randbytes(n)).rstrip(b"=").decode()


def _provider_for(n: int) -> str:
    slot = n % 10
    for provider, share in PROVIDER_MIX:
        if slot < share:
            return provider
        slot -= share
    raise AssertionError(n)  # the shares add up to 10


def make_row(rng: random.Random, n: int) -> dict[str, object]:
    provider = _provider_for(n)
    user_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if provider == "garmin":
        access = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        refresh = _b64(rng, 180)  # a long token secret
        provider_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        expires_at = OAUTH1_EXPIRES_AT
    else:
        # header.payload.signature, as most OAuth 2.0 providers issue them
        access = f"{_JWT_HEADER}.{_b64(rng, 108)}.{_b64(rng, 64)}"
        refresh = _b64(rng, 48)
        provider_id = _b64(rng, 9).upper()[:8] if provider == "fitbit" else rng.randrange(10**9)
        expires_at = 1_764_000_000 + rng.randrange(30 * 86_400)
    return {
        "provider": provider,
        "user_id": user_id,
        "access_token": access,
        "refresh_token": refresh,
        "provider_id": str(provider_id),
        "expires_at": expires_at,
        "oauth_scopes": SCOPES[provider],
    }


def generate(rows: int, seed: int = DEFAULT_SEED) -> ConnectionFile:
    """``rows`` JSONL lines (one connection each); the same arguments give the same bytes."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    user_ids: set[str] = set()
    per_provider: dict[str, int] = {}
    for n in range(rows):
        row = make_row(rng, n)
        lines.append(json.dumps(row, separators=(",", ":")).encode())
        user_ids.add(str(row["user_id"]))
        per_provider[str(row["provider"])] = per_provider.get(str(row["provider"]), 0) + 1
    if len(user_ids) != rows:  # UUIDs from 128 random bits: never, but the checks rely on it
        raise AssertionError("duplicate user ids in generated data")
    return ConnectionFile(rows, b"\n".join(lines) + b"\n", frozenset(user_ids), per_provider)
