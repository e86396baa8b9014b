"""Typed file-level failures. Each becomes the manifest's ``error`` in one place (the pipeline).

Messages are written for the person who uploaded the file and never include row contents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bulk_import.models import ErrorInfo


class FileError(Exception):
    """The file as a whole cannot be (fully) processed; the manifest says ``failed``."""

    @property
    def kind(self) -> str:
        return type(self).__name__

    @property
    def message(self) -> str:
        return str(self)


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


class RetryLater(Exception):
    """Not the file's fault and likely to pass (a service the function needs did not answer):
    the invocation fails, after a checkpoint, so that Lambda retries it."""


def to_info(error: FileError | None) -> ErrorInfo | None:
    """The manifest's and the checkpoint's ``error``, masked like a log line."""
    from bulk_import.models import ErrorInfo  # noqa: PLC0415 - models imports nothing from here
    from bulk_import.redaction import redact_text  # noqa: PLC0415

    if error is None:
        return None
    return ErrorInfo(type=error.kind, message=redact_text(error.message))


def from_info(info: ErrorInfo) -> FileError:
    """Rebuild a stored stop reason (kept across invocations in the checkpoint)."""
    classes: list[type[FileError]] = [FileError, *FileError.__subclasses__()]
    kinds = {cls.__name__: cls for cls in classes}
    return kinds.get(info.type, FileError)(info.message)
