"""``python -m bulk_import_cli``: the same as the ``bulk-import`` console script."""

from bulk_import_cli.app import main

main()
