"""Every setting the function reads, in one validated record.

Nothing else in the package reads ``os.environ`` (but for Powertools' own names, in
``observability``): a typo in a deployed variable fails the invocation with an error that names
the variable, instead of surfacing deep in a run. Each field's variable is its
name in upper case.
"""

import os
import re
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from bulk_import.model.providers import PROVIDERS, provider_list

Region = Literal["us", "eu"]
Environment = Literal["production", "sandbox"]

# Junction's (Vital's) API hosts, by (VITAL_ENVIRONMENT, VITAL_REGION): the one list of them.
# VITAL_API_BASE_URL, when set, takes precedence (the tryvital.io hosts, a local stand-in).
BASE_URLS: Mapping[tuple[Environment, Region], str] = MappingProxyType(
    {
        ("production", "us"): "https://api.us.junction.com",
        ("production", "eu"): "https://api.eu.junction.com",
        ("sandbox", "us"): "https://api.sandbox.us.junction.com",
        ("sandbox", "eu"): "https://api.sandbox.eu.junction.com",
    }
)


def _with_trailing_slash(prefix: str) -> str:
    return prefix if prefix.endswith("/") else prefix + "/"


Prefix = Annotated[str, Field(min_length=1), AfterValidator(_with_trailing_slash)]


def _http_base_url(url: str) -> str:
    """An http(s) origin without trailing slash (a plain check: HttpUrl costs ~10 ms of import)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http(s) URL such as https://api.us.junction.com")
    return url.strip().rstrip("/")


BaseUrl = Annotated[str, AfterValidator(_http_base_url)]

_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def _team_id(value: str) -> str:
    """A Vital team id: a UUID in its 8-4-4-4-12 form, sent in lower case."""
    value = value.strip()
    if not _UUID_TEXT.fullmatch(value):
        # The value is not quoted back: SettingsError names the variable only.
        raise ValueError("must be a UUID (8-4-4-4-12 hexadecimal digits)")
    return value.lower()


TeamId = Annotated[str, AfterValidator(_team_id)]


def _slugs(value: object) -> object:
    return provider_list(value) if isinstance(value, str) else value


ProviderSlugs = Annotated[frozenset[str], BeforeValidator(_slugs)]


def _variable(field_name: str) -> str:
    return field_name.upper()


class Settings(BaseModel):
    """Settings from the environment; each field's variable is its name in upper case."""

    model_config = ConfigDict(
        defer_build=True,
        frozen=True,
        alias_generator=_variable,
        validate_by_name=True,
        validate_by_alias=True,
    )

    # Which of BASE_URLS the function talks to, unless VITAL_API_BASE_URL is set.
    vital_region: Region = "us"
    vital_environment: Environment = "production"
    vital_api_base_url: BaseUrl | None = None
    vital_api_key_secret: Annotated[str, Field(min_length=1)]
    # Sent as the team_id query parameter when set.
    vital_team_id: TeamId | None = None
    # Provider slugs Vital takes beyond those this release knows (comma-separated).
    extra_providers: ProviderSlugs = frozenset()
    chunk_size: Annotated[int, Field(ge=1, le=5000)] = 500
    # Upper bound for one request body; keeps each POST well under API gateway limits.
    max_body_bytes: Annotated[int, Field(ge=10_000)] = 4_000_000
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    wait_for_completion: bool = True
    # Once a file is done, look up every imported or enqueued row's user (one GET each).
    verify_after_import: bool = False
    incoming_prefix: Prefix = "incoming/"
    results_prefix: Prefix = "results/"
    retry_prefix: Prefix = "retry/"
    idempotency_table: str | None = None
    continuation_queue_url: str | None = None
    notify_topic_arn: str | None = None
    # Largest decompressed size accepted: a decompression bomb fails the file, not the function.
    max_decompressed_bytes: Annotated[int, Field(ge=1024)] = 20 * 1024**3
    # Longest accepted input line / CSV record / JSON element, in bytes.
    max_row_bytes: Annotated[int, Field(ge=1024)] = 1_000_000
    # Stop the file once this share of posted rows failed or errored (after a warm-up).
    failure_threshold_percent: Annotated[float, Field(ge=0, le=100)] = 100.0
    # Stop reading a file whose first this many rows (or more: checked between blocks of rows)
    # were all rejected; 0: never.
    rejected_stop_after_rows: Annotated[int, Field(ge=0)] = 1000
    # Stop reading a file once more than this share of its rows were rejected, judged from
    # 10,000 rows on; 100: never.
    rejected_stop_percent: Annotated[float, Field(ge=0, le=100)] = 50.0
    # Invocations that may read one file; the one after fails it with what was read so far. A
    # file this slow to read is mostly blank lines or a bigger import than a day of Lambda time.
    max_invocations_per_file: Annotated[int, Field(ge=1)] = 100
    # Seconds of Lambda time kept in reserve to finish in-flight chunks and checkpoint.
    safety_margin_seconds: Annotated[float, Field(ge=0)] = 60.0
    # Chunks sent between two checkpoints (0: twice MAX_CONCURRENCY, or ~2 s worth when faster).
    # Smaller means fewer rows in doubt after a crash, larger means fewer S3 writes.
    checkpoint_every_chunks: Annotated[int, Field(ge=0)] = 0
    http_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    secret_max_age_seconds: Annotated[int, Field(ge=0)] = 300

    @model_validator(mode="after")
    def _prefixes_apart(self) -> Self:
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
    def providers(self) -> frozenset[str]:
        """The providers rows may name: those Vital documents, and EXTRA_PROVIDERS."""
        return PROVIDERS | self.extra_providers

    @property
    def base_url(self) -> str:
        """VITAL_API_BASE_URL when set, else the host of VITAL_ENVIRONMENT and VITAL_REGION."""
        if self.vital_api_base_url is not None:
            return self.vital_api_base_url
        return BASE_URLS[self.vital_environment, self.vital_region]

    @property
    def bulk_import_url(self) -> str:
        return self.base_url + "/v2/link/bulk_import"

    @property
    def bulk_op_url(self) -> str:
        return self.base_url + "/v2/link/bulk_op"

    @classmethod
    def variables(cls) -> frozenset[str]:
        """The names of the environment variables read."""
        return frozenset(_variable(name) for name in cls.model_fields)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        env = os.environ if environ is None else environ
        # Empty strings in a deployed template mean "not set". Only our own variables are
        # validated: pydantic's errors quote their input, and the environment holds credentials.
        names = cls.variables()
        values = {k: v for k, v in env.items() if v != "" and k in names}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(exc) from None


class SettingsError(ValueError):
    """Invalid configuration, named by variable, without echoing any value."""

    def __init__(self, exc: ValidationError) -> None:
        problems = [
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: "
            + error["msg"].removeprefix("Value error, ")
            for error in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        super().__init__("invalid configuration: " + "; ".join(problems))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read once per execution environment; tests call ``get_settings.cache_clear()``."""
    return Settings.from_env()
