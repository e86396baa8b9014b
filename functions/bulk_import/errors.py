"""Typed file-level failures. Each becomes the manifest's ``error`` in one place (the pipeline).

Messages are written for the person who uploaded the file and never include row contents.
"""

from __future__ import annotations


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
