"""The import as small steps: resume, intake, dispatch, stop, finish."""

from bulk_import.run.context import FileResult
from bulk_import.run.importer import import_object
from bulk_import.run.invocation import handle

__all__ = ["FileResult", "handle", "import_object"]
