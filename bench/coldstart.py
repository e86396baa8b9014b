"""Cold start: import time of the handler module vs. its unavoidable dependencies alone.

Each measurement is a fresh interpreter (``python -c``) timing only the import statement, best
of N, interleaved so drift hits both alike, with bytecode cached (the caller's environment sets
PYTHONPYCACHEPREFIX). ``-X importtime`` then lists the modules the handler pulls in beyond the
baseline, heaviest first: the candidates to defer. The baseline names pydantic's BaseModel,
as every package with pydantic models does. For context, it is also timed without it
(``import pydantic`` alone is lazy) and with one pydantic model defined and built (what the first
schema costs), and the handler and baseline are timed with no bytecode at all (an empty cache,
nothing written): what a deployment package without .pyc files costs on a read-only
/var/task, where nothing can be cached between cold starts.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HANDLER = "import bulk_import.handler"
BASELINE = (
    "import boto3, httpx\nfrom pydantic import BaseModel\n"
    "from aws_lambda_powertools import Logger, Metrics"
)
# For context: the baseline plus one model of one field, its schema built as a model's is by
# default: the cost the handler's models defer to their first use.
BASELINE_ONE_MODEL = BASELINE + "\nclass One(BaseModel):\n    a: int"
# And the baseline without BaseModel: ``import pydantic`` is lazy and loads none of it.
BASELINE_NO_BASEMODEL = (
    "import boto3, httpx, pydantic\nfrom aws_lambda_powertools import Logger, Metrics"
)
TIMEOUT_S = 60
# httpx imports its command line (click, rich, pygments) when they are installed, as the `cli`
# extra installs them into .venv; the Lambda package has none of them. Both imports are timed
# without them, as on Lambda.
WITHOUT_CLI = "import sys\nsys.modules.update(dict.fromkeys(('click', 'rich', 'pygments')))\n"


def _python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter (ours) on fixed statements; raises if it fails or hangs."""
    return subprocess.run(  # noqa: S603 - our own interpreter and fixed statements
        [sys.executable, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )


def _timed(statement: str, env: dict[str, str]) -> float:
    code = (
        WITHOUT_CLI
        + "import time\n_t = time.perf_counter()\n"
        + statement
        + "\nprint(time.perf_counter() - _t)\n"
    )
    return float(_python(["-c", code], env).stdout.strip().splitlines()[-1])


def _import_profile(statement: str, env: dict[str, str]) -> dict[str, int]:
    """module -> self import time in µs, from ``-X importtime``."""
    done = _python(["-X", "importtime", "-c", WITHOUT_CLI + statement], env)
    modules: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3:
            modules[parts[2].strip()] = int(parts[0].strip())
    return modules


def measure(env: dict[str, str], repeats: int = 5) -> dict[str, Any]:
    handler: list[float] = []
    baseline: list[float] = []
    one_model: list[float] = []
    no_basemodel: list[float] = []
    for _ in range(repeats):
        handler.append(_timed(HANDLER, env))
        baseline.append(_timed(BASELINE, env))
        one_model.append(_timed(BASELINE_ONE_MODEL, env))
        no_basemodel.append(_timed(BASELINE_NO_BASEMODEL, env))
    extra_top: list[dict[str, Any]] = []
    extra_total_ms = 0.0
    try:
        ours = _import_profile(HANDLER, env)
        base = _import_profile(BASELINE, env)
        extra = {m: us for m, us in ours.items() if m not in base}
        extra_total_ms = sum(extra.values()) / 1000
        for module, us in sorted(extra.items(), key=lambda kv: -kv[1])[:12]:
            extra_top.append({"module": module, "self_ms": round(us / 1000, 2)})
    except (subprocess.SubprocessError, ValueError) as exc:
        extra_top = [{"module": f"(importtime failed: {type(exc).__name__})", "self_ms": 0}]
    source_only: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-nopyc-") as empty:
        bare = {**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": empty}
        rounds = max(1, min(3, repeats))
        source_only["handler_s"] = min(_timed(HANDLER, bare) for _ in range(rounds))
        source_only["baseline_s"] = min(_timed(BASELINE, bare) for _ in range(rounds))
        source_only["ratio"] = source_only["handler_s"] / source_only["baseline_s"]
    return {
        "repeats": repeats,
        "source_only": source_only,
        "handler_s": min(handler),
        "baseline_s": min(baseline),
        "ratio": min(handler) / min(baseline),
        "baseline_no_basemodel_s": min(no_basemodel),
        "ratio_vs_no_basemodel": min(handler) / min(no_basemodel),
        "baseline_one_model_s": min(one_model),
        "one_model_ratio": min(one_model) / min(baseline),
        "ratio_vs_one_model": min(handler) / min(one_model),
        "handler_all_s": handler,
        "baseline_all_s": baseline,
        "handler_statement": HANDLER,
        "baseline_statement": BASELINE,
        "extra_modules_self_ms_total": round(extra_total_ms, 1),
        "extra_modules_top": extra_top,
    }
