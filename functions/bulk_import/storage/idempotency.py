"""Duplicate-event protection with Powertools Idempotency on DynamoDB (``IDEMPOTENCY_TABLE``).

The key is the object version plus the segment (``ObjectRef``): a redelivered S3 event or
continuation message returns the stored summary instead of importing again. Without a table
(local runs) the checkpoint and manifest checks of the run still skip finished work, and
the idempotency utility is never imported.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from bulk_import.errors import AlreadyInProgress
from bulk_import.model import ObjectRef

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
    from aws_lambda_powertools.utilities.typing import LambdaContext

# Long enough to absorb late S3 redeliveries and Lambda's async retries of a long import.
EXPIRES_AFTER_SECONDS = 2 * 24 * 3600

Work = Callable[[ObjectRef], dict[str, Any]]


@lru_cache(maxsize=4)
def _persistence(table_name: str) -> DynamoDBPersistenceLayer:
    from aws_lambda_powertools.utilities.idempotency import (  # noqa: PLC0415 - cold start
        DynamoDBPersistenceLayer,
    )

    return DynamoDBPersistenceLayer(table_name=table_name)


def once_per_ref(work: Work, table_name: str | None, context: LambdaContext) -> Work:
    """``work`` guarded so each ``ObjectRef`` runs once; unchanged when no table is set."""
    if not table_name:
        return work
    from aws_lambda_powertools.utilities.idempotency import (  # noqa: PLC0415 - cold start
        IdempotencyConfig,
        idempotent_function,
    )
    from aws_lambda_powertools.utilities.idempotency.exceptions import (  # noqa: PLC0415
        IdempotencyAlreadyInProgressError,
    )

    config = IdempotencyConfig(expires_after_seconds=EXPIRES_AFTER_SECONDS)
    config.register_lambda_context(context)

    @idempotent_function(  # type: ignore[untyped-decorator]
        data_keyword_argument="ref",
        persistence_store=_persistence(table_name),
        config=config,
        key_prefix="bulk-import",
    )
    def guarded(*, ref: ObjectRef) -> dict[str, Any]:
        return work(ref)

    def run(ref: ObjectRef) -> dict[str, Any]:
        try:
            result: dict[str, Any] = guarded(ref=ref)
        except IdempotencyAlreadyInProgressError:
            raise AlreadyInProgress(ref.key) from None
        return result

    return run
