"""Lambda entry point: Powertools decorators, parse the event, run the import, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bulk_import import events, wiring
from bulk_import.config import get_settings
from bulk_import.observability import logger, metrics, tracer
from bulk_import.run.invocation import handle

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from bulk_import.config import Settings

type Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]
type Builder = Callable[[Settings, LambdaContext], wiring.Wiring]


def make_handler(build: Builder = wiring.build) -> Handler:
    """The handler, with its collaborators from ``build`` (tests pass one that adds fakes)."""

    @logger.inject_lambda_context(clear_state=True)
    @metrics.log_metrics(capture_cold_start_metric=True)
    @tracer.capture_lambda_handler(capture_response=False)
    def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        settings = get_settings()
        return handle(events.work_items(event, settings), build(settings, context))

    decorated: Handler = lambda_handler
    return decorated


lambda_handler = make_handler()
