"""Logger, Metrics and Tracer: created once here and imported everywhere.

Construction does no I/O, so importing this module is cheap and safe in tests.
The logger's formatter redacts token-shaped values as a second line of defence: the code
never logs row contents or request bodies in the first place.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

from aws_lambda_powertools import Logger, Metrics, Tracer, single_metric
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.metrics import MetricUnit

from bulk_import.redaction import redact_text

if TYPE_CHECKING:
    from stamina.instrumentation import RetryDetails

    from bulk_import.model import Manifest
    from bulk_import.vital.client import CallStats

# Powertools' own settings, which it reads from the environment too; the defaults are the
# template's, whose alarms watch the metrics under them.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "bulk-import"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "VitalBulkImport"


class RedactingFormatter(LambdaPowertoolsFormatter):
    """Powertools' JSON formatter with token-shaped substrings masked in the final line."""

    def serialize(self, log: dict[str, Any]) -> str:  # type: ignore[override]
        return redact_text(super().serialize(log))


class Decorator(Protocol):
    def __call__[F: Callable[..., Any]](self, function: F, /) -> F: ...


class TracerLike(Protocol):
    """The part of Powertools' Tracer we use, typed (its decorators are not)."""

    def capture_lambda_handler(self, *, capture_response: bool) -> Decorator: ...

    def capture_method(self, *, capture_response: bool) -> Decorator: ...

    def put_annotation(self, key: str, value: str) -> None: ...

    def put_metadata(self, key: str, value: Any) -> None: ...


class _NoTracer:
    """Stands in for Tracer when tracing is off, so the X-Ray SDK (~130 ms) is never imported."""

    def capture_lambda_handler(self, *, capture_response: bool) -> Decorator:
        return _unchanged

    def capture_method(self, *, capture_response: bool) -> Decorator:
        return _unchanged

    def put_annotation(self, key: str, value: str) -> None:
        pass

    def put_metadata(self, key: str, value: Any) -> None:
        pass


def _unchanged[F: Callable[..., Any]](function: F, /) -> F:
    return function


def _tracer() -> TracerLike:
    # Powertools' own rule: POWERTOOLS_TRACE_DISABLED, or not running in Lambda / SAM local.
    if Tracer._is_tracer_disabled():
        return _NoTracer()
    return cast(TracerLike, Tracer(service=SERVICE))


logger = Logger(service=SERVICE, logger_formatter=RedactingFormatter())
# botocore's DEBUG lines print response bodies, Secrets Manager's SecretString (the API key)
# among them; Lambda turns the root logger to DEBUG when the function's log level is DEBUG.
logging.getLogger("botocore").setLevel(logging.INFO)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = _tracer()


def _log_retry(details: RetryDetails) -> None:
    """stamina's retries as structured lines (its default is a plain-text warning)."""
    logger.info(
        "retry scheduled",
        extra={
            "retry": details.retry_num,
            "wait_s": round(details.wait_for, 3),
            "cause": type(details.caused_by).__name__,
        },
    )


@functools.cache
def log_retries() -> None:
    """stamina's retry notices into this log; called before the first retry, once.

    Not at import: stamina and tenacity cost ~10 ms of every cold start, and most invocations
    never retry (``vital.VitalClient._retry`` imports them when one does).
    """
    from stamina.instrumentation import set_on_retry_hooks  # noqa: PLC0415 - rare path

    set_on_retry_hooks([_log_retry])


def record_file_metrics(manifest: Manifest | None, stats: CallStats | None) -> None:
    """EMF metrics: HTTP stats per invocation; row totals (and per provider) once per file."""
    if stats is not None:
        metrics.add_metric(name="Retries", unit=MetricUnit.Count, value=stats.retries)
        metrics.add_metric(name="Throttles", unit=MetricUnit.Count, value=stats.throttles)
        metrics.add_metric(name="ServerErrors", unit=MetricUnit.Count, value=stats.server_errors)
        metrics.add_metric(
            name="RetryWaitSeconds", unit=MetricUnit.Seconds, value=stats.wait_seconds
        )
        metrics.add_metric(
            name="TransportErrors", unit=MetricUnit.Count, value=stats.transport_errors
        )
        metrics.add_metric(
            name="RetriesRefused", unit=MetricUnit.Count, value=stats.retries_refused
        )
        metrics.add_metric(
            name="RequestsShortCircuited", unit=MetricUnit.Count, value=stats.short_circuited
        )
        metrics.add_metric(name="AnswersLost", unit=MetricUnit.Count, value=stats.answers_lost)
    if manifest is None:
        return
    counts = manifest.counts
    for name, value in (
        ("RowsRead", counts.rows),
        ("RowsRejected", counts.rejected),
        ("RowsDuplicate", counts.duplicates),
        ("RowsImported", counts.imported),
        ("RowsFailed", counts.failed),
        ("RowsEnqueued", counts.enqueued),
        ("RowsErrored", counts.errored),
        ("ChunksPosted", len(manifest.chunks)),
    ):
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    metrics.add_metric(
        name="FilesFailed" if manifest.status == "failed" else "FilesProcessed",
        unit=MetricUnit.Count,
        value=1,
    )
    for provider, per in manifest.providers.items():
        for name, value in (("RowsImported", per.imported), ("RowsFailed", per.failed)):
            with single_metric(
                name=name,
                unit=MetricUnit.Count,
                value=value,
                namespace=NAMESPACE,
                default_dimensions={"service": SERVICE},
            ) as metric:
                metric.add_dimension(name="provider", value=provider)
