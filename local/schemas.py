"""Writes the JSON Schemas of the contracts, generated from the package's models.

``python -m local.schemas`` (``make schemas``) rewrites ``schemas/``; ``--check`` exits 1 when
a committed schema differs from what the models generate. The schemas are the models' own: the
input row as the importer reads it (validation mode), the manifest as it writes it
(serialization mode).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bulk_import.model import ConnectionRow, Manifest

ROOT = Path(__file__).resolve().parent.parent
DIRECTORY = ROOT / "schemas"
SCHEMAS: dict[str, Callable[[], dict[str, Any]]] = {
    "connection-row.schema.json": lambda: ConnectionRow.model_json_schema(mode="validation"),
    "manifest.schema.json": lambda: Manifest.model_json_schema(mode="serialization"),
}


def render(name: str) -> str:
    """One schema's text, as committed: draft 2020-12, keys in the models' order."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **SCHEMAS[name](),
    }
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.schemas", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--directory", type=Path, default=DIRECTORY, help="default: schemas/")
    args = parser.parse_args(argv)
    stale = []
    for name in SCHEMAS:
        path = args.directory / name
        text = render(name)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        args.directory.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print("out of date (run `make schemas`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
