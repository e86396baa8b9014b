"""Every setting the function reads, in one validated model.

Nothing else in the package reads ``os.environ`` (but for Powertools' own names, in
``observability``): a typo in a deployed variable fails the
invocation with a pydantic error that names the variable, instead of surfacing deep in a run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

PRODUCTION_BASE_URL = "https://api.tryvital.io"


def _with_trailing_slash(prefix: str) -> str:
    return prefix if prefix.endswith("/") else prefix + "/"


Prefix = Annotated[str, Field(min_length=1), AfterValidator(_with_trailing_slash)]


def _http_base_url(url: str) -> str:
    """An http(s) origin without trailing slash (a plain check: HttpUrl costs ~10 ms of import)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http(s) URL such as https://api.tryvital.io")
    return url.strip().rstrip("/")


BaseUrl = Annotated[str, AfterValidator(_http_base_url)]


class Settings(BaseModel):
    """Settings from the environment; field aliases are the variable names."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    vital_api_base_url: BaseUrl = Field(default=PRODUCTION_BASE_URL, alias="VITAL_API_BASE_URL")
    vital_api_key_secret: str = Field(alias="VITAL_API_KEY_SECRET", min_length=1)
    vital_team_id: str | None = Field(default=None, alias="VITAL_TEAM_ID")
    chunk_size: int = Field(default=500, ge=1, le=5000, alias="CHUNK_SIZE")
    # Upper bound for one request body; keeps each POST well under API gateway limits.
    max_body_bytes: int = Field(default=4_000_000, ge=10_000, alias="MAX_BODY_BYTES")
    max_concurrency: int = Field(default=4, ge=1, le=64, alias="MAX_CONCURRENCY")
    wait_for_completion: bool = Field(default=True, alias="WAIT_FOR_COMPLETION")
    incoming_prefix: Prefix = Field(default="incoming/", alias="INCOMING_PREFIX")
    results_prefix: Prefix = Field(default="results/", alias="RESULTS_PREFIX")
    retry_prefix: Prefix = Field(default="retry/", alias="RETRY_PREFIX")
    idempotency_table: str | None = Field(default=None, alias="IDEMPOTENCY_TABLE")
    continuation_queue_url: str | None = Field(default=None, alias="CONTINUATION_QUEUE_URL")
    notify_topic_arn: str | None = Field(default=None, alias="NOTIFY_TOPIC_ARN")
    # Largest decompressed size accepted: a decompression bomb fails the file, not the function.
    max_decompressed_bytes: int = Field(
        default=20 * 1024**3, ge=1024, alias="MAX_DECOMPRESSED_BYTES"
    )
    # Longest accepted input line / CSV record / JSON element, in bytes.
    max_row_bytes: int = Field(default=1_000_000, ge=1024, alias="MAX_ROW_BYTES")
    # Stop the file once this share of posted rows failed or errored (after a warm-up).
    failure_threshold_percent: float = Field(
        default=100.0, ge=0, le=100, alias="FAILURE_THRESHOLD_PERCENT"
    )
    # Seconds of Lambda time kept in reserve to finish in-flight chunks and checkpoint.
    safety_margin_seconds: float = Field(default=60.0, ge=0, alias="SAFETY_MARGIN_SECONDS")
    # Chunks sent between two checkpoints (0: twice MAX_CONCURRENCY, or ~2 s worth when faster).
    # Smaller means fewer rows in doubt after a crash, larger means fewer S3 writes.
    checkpoint_every_chunks: int = Field(default=0, ge=0, alias="CHECKPOINT_EVERY_CHUNKS")
    http_timeout_seconds: float = Field(default=30.0, gt=0, alias="HTTP_TIMEOUT_SECONDS")
    max_attempts: int = Field(default=5, ge=1, le=20, alias="MAX_ATTEMPTS")
    secret_max_age_seconds: int = Field(default=300, ge=0, alias="SECRET_MAX_AGE_SECONDS")

    @model_validator(mode="after")
    def _prefixes_apart(self) -> Settings:
        """Outputs inside the incoming prefix would trigger the function on its own results; and
        retry files (they hold tokens) under the results prefix would keep its longer expiry."""
        prefixes = (
            ("INCOMING_PREFIX", self.incoming_prefix),
            ("RESULTS_PREFIX", self.results_prefix),
            ("RETRY_PREFIX", self.retry_prefix),
        )
        for i, (name, prefix) in enumerate(prefixes):
            for other_name, other in prefixes[i + 1 :]:
                if prefix.startswith(other) or other.startswith(prefix):
                    raise ValueError(f"{other_name} ({other}) must not overlap {name} ({prefix})")
        return self

    @property
    def bulk_import_url(self) -> str:
        return self.vital_api_base_url + "/v2/link/bulk_import"

    @property
    def bulk_op_url(self) -> str:
        return self.vital_api_base_url + "/v2/link/bulk_op"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        # Empty strings in a deployed template mean "not set". Only our own variables are
        # validated: pydantic's errors quote their input, and the environment holds credentials.
        names = {field.alias for field in cls.model_fields.values()}
        values = {k: v for k, v in env.items() if v != "" and k in names}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(exc) from None


class SettingsError(ValueError):
    """Invalid configuration, named by variable, without echoing any value."""

    def __init__(self, exc: ValidationError) -> None:
        problems = [
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        super().__init__("invalid configuration: " + "; ".join(problems))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read once per execution environment; tests call ``get_settings.cache_clear()``."""
    return Settings.from_env()
