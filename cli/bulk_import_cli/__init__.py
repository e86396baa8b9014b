"""``bulk-import``: the operator's command line for the importer (typer + rich).

It never ships to Lambda and imports the Lambda's package (``bulk_import``) for everything it
does: reading, validation, dedupe, chunking, the Vital client and the run itself.
"""
