"""Models used on the posting threads are built before those threads start: pydantic builds a
deferred model on first use without a lock, and a class half built by one thread fails another
(pydantic#13438), which would fail a file whose rows Vital imported."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from bulk_import import model
from bulk_import.run.dispatch import POSTING_THREAD_MODELS

PACKAGE = Path(__file__).resolve().parents[2] / "functions" / "bulk_import"
# What runs on a posting thread: posting a chunk, the client and its messages, chunk records,
# and opening the object (its description).
THREADED = [
    *sorted((PACKAGE / "vital").glob("*.py")),
    PACKAGE / "ingest" / "chunking.py",
    PACKAGE / "ingest" / "source.py",
]


def test_every_model_named_by_threaded_code_is_built_before_the_threads_start() -> None:
    # Given the models the package defines
    models = {
        name
        for name in model.__all__
        if isinstance(cls := getattr(model, name), type) and issubclass(cls, BaseModel)
    }
    # When the code that runs on posting threads names one of them (bulk ops run on the reading
    # thread, after the posting threads are done; user providers are looked up by the command
    # line's verify, which builds their model before its own threads start)
    named = set()
    for path in THREADED:
        if path.name in {"bulk_ops.py", "providers.py"}:
            continue
        text = path.read_text(encoding="utf-8")
        # Built (a call) or validated (model_validate*): what makes pydantic build the schema.
        named |= {m for m in models if re.search(rf"\b{m}(?:\(|\.model_validate)", text)}
    # Then it is in the list the dispatcher builds first
    assert named
    assert named <= {m.__name__ for m in POSTING_THREAD_MODELS}


def test_a_dispatcher_builds_them_before_it_starts_its_threads() -> None:
    # Given a fresh interpreter where none of them is built yet
    probe = (
        "import bulk_import.handler\n"
        "from bulk_import.run.dispatch import POSTING_THREAD_MODELS, build_posting_thread_models\n"
        "before = [m.__pydantic_complete__ for m in POSTING_THREAD_MODELS]\n"
        "build_posting_thread_models()\n"
        "after = [m.__pydantic_complete__ for m in POSTING_THREAD_MODELS]\n"
        "print(any(before), all(after))\n"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter, a fixed probe
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    # Then building them completes every one
    assert out == ["False", "True"]
    source = (PACKAGE / "run" / "dispatch.py").read_text(encoding="utf-8")
    init = source[source.index("    def __init__(self, ctx: RunContext)") :]
    assert init.index("build_posting_thread_models()") < init.index("ThreadPoolExecutor(")
