"""The package's one error hierarchy: every failure it raises on purpose, one code per class.

Three families decide what happens next, in one place each:

* ``FileError``: the file as a whole cannot be (fully) processed. The run turns it into the
  manifest's ``error`` (``status: failed``); the invocation ends normally, so Lambda does not
  retry a file that would fail the same way.
* ``TransientError``: not the file's fault and likely to pass (S3 or Secrets Manager did not
  answer). The run checkpoints, then the invocation fails so that Lambda retries and resumes.
* ``VitalError``: a request to Vital failed; the chunk's rows get an outcome from it, and the
  fatal kinds (``VitalAuthError``, a refused first request) stop the file.

Messages are written for the person who uploaded the file and never include row contents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

    from bulk_import.model import ErrorInfo, SourceRef, ValidationIssue


class BulkImportError(Exception):
    """Base of every error the package raises on purpose."""

    # The name a manifest, a checkpoint or a log line gives the error: the class's own.
    code: ClassVar[str] = "BulkImportError"

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls.code = cls.__name__

    @property
    def message(self) -> str:
        return str(self)


# --- the file fails -------------------------------------------------------------------------


class FileError(BulkImportError):
    """The file as a whole cannot be (fully) processed; the manifest says ``failed``."""


class SourceNotFound(FileError):
    """The object (or the named version) is gone or unreadable."""


class UnsupportedFile(FileError):
    """The key's extension names no format we read."""


class MalformedFile(FileError):
    """The content cannot be parsed past some point (corrupt compression, broken JSON/CSV)."""


class FileTooLarge(FileError):
    """Decompressed content exceeds MAX_DECOMPRESSED_BYTES (a decompression bomb guard)."""


class ImportAborted(FileError):
    """The import was stopped on purpose (API key rejected, failure threshold passed)."""


class ConfigurationError(FileError):
    """The deployment is misconfigured (e.g. the API key secret cannot be read)."""


class InternalError(FileError):
    """An unexpected exception; details are in the function's logs, not in the manifest."""


# --- the invocation is retried ----------------------------------------------------------------


class TransientError(BulkImportError):
    """A service the function needs did not answer: checkpointed, then raised for a retry."""


class ImportStillRunning(TransientError):
    """Another invocation holds this S3 event's object; raised so Lambda retries it later."""


# --- the import of this key is someone else's -------------------------------------------------


class Superseded(BulkImportError):
    """Another import of this key replaced the checkpoint since this run last wrote it.

    ``newer``: the upload that took the key over, when it is another one (not this upload's
    second delivery): the run then leaves a ``superseded`` manifest naming it.
    """

    def __init__(self, message: str, newer: SourceRef | None = None) -> None:
        super().__init__(message)
        self.newer = newer


class AlreadyInProgress(BulkImportError):
    """Another invocation holds the idempotency record of this ref right now."""


# --- Vital ------------------------------------------------------------------------------------


class VitalError(BulkImportError):
    """Base of every failure talking to Vital; ``status`` is the last HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class VitalAuthError(VitalError):
    """401/403: wrong key, or Link Migration / BYO OAuth not enabled. Fatal for the file."""


class VitalRejected(VitalError):
    """422: Vital's validation refused the body; ``issues`` point at connections when they can.

    The issues' ``msg`` and ``loc`` are already scrubbed of the request's token values.
    """

    def __init__(self, message: str, issues: list[ValidationIssue], attempts: int = 0) -> None:
        super().__init__(message, 422, attempts)
        self.issues = issues


class VitalClientError(VitalError):
    """Another 4xx, a 501/505 (or a request httpx cannot send): retrying cannot fix it."""


class VitalProtocolError(VitalError):
    """Vital answered, but not in the documented shape; what happened to the rows is unknown."""


class VitalUnavailable(VitalError):
    """Retries, the retry budget, the deadline or the circuit breaker ran out."""


class VitalNoTime(VitalUnavailable):
    """Too little Lambda time left to start a request: nothing was sent."""


class VitalAnswerLost(VitalUnavailable):
    """A bulk import whose answer never came back (a read timeout, a dropped connection, a
    gateway's 502/504): Vital may hold the chunk, so it is settled by asking Vital
    (``vital/settle.py``), not sent again blindly. ``sent_at``: when that request started
    (epoch seconds), the earliest a bulk op of it can have started."""

    def __init__(
        self, message: str, status: int | None = None, attempts: int = 0, *, sent_at: float
    ) -> None:
        super().__init__(message, status, attempts)
        self.sent_at = sent_at


# --- mapping ----------------------------------------------------------------------------------


def aws_error_code(error: BaseException | None) -> str | None:
    """The error code an AWS service answered (``NoSuchKey``, ``PreconditionFailed``…)."""
    from botocore.exceptions import ClientError  # noqa: PLC0415 - loaded with boto3 anyway

    if isinstance(error, ClientError):
        return _code_of(error) or None
    return None


def _code_of(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def to_info(error: FileError | None) -> ErrorInfo | None:
    """The manifest's and the checkpoint's ``error``, masked like a log line."""
    from bulk_import.model import ErrorInfo  # noqa: PLC0415 - model imports nothing from here
    from bulk_import.redaction import redact_text  # noqa: PLC0415

    if error is None:
        return None
    return ErrorInfo(type=error.code, message=redact_text(error.message))


def from_info(info: ErrorInfo) -> FileError:
    """Rebuild a stored stop reason (kept across invocations in the checkpoint)."""
    classes: list[type[FileError]] = [FileError, *FileError.__subclasses__()]
    kinds = {cls.code: cls for cls in classes}
    return kinds.get(info.type, FileError)(info.message)
