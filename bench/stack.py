"""The local stack every contender runs against: moto server + Vital stand-in on 127.0.0.1.

The stand-in runs in the parent process (the harness reads its record); moto runs in a process
of its own. In one process they would share one GIL: serving a 55 MB object and checkpoint
uploads would stall the stand-in's event loop, and every contender would wait on the bench's
own plumbing, not on Vital's latency. Children reach both through the environment only.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import boto3

from local.moto_server import DEFAULT_REGION, aws_env
from local.standin import StandinState, VitalStandin

if TYPE_CHECKING:
    from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "vital-import-bench"
SECRET_NAME = "vital/bulk-import/bench-api-key"  # noqa: S105 - a secret's name, not its value
# The contenders' AWS config: S3 uploads unsigned, as over https (see the file).
AWS_CONFIG = Path(__file__).with_name("aws-config")
INCOMING = "incoming/bench/"


class BenchState(StandinState):
    """The stand-in's state, with a membership test that costs O(chunk), not O(known users).

    ``StandinState._import`` canonicalises every known user on every request, which is fine for
    tests with a handful of users but costs the stand-in ~O(100k) work per request at benchmark
    sizes: it would dominate every contender's wall time. The
    generated user ids are canonical UUID strings already, so each request narrows the known set
    to the users it names before the stand-in does its usual work.
    """

    bench_known: frozenset[str] = frozenset()

    def _import(self, provider: str, user_ids: list[str], *, enqueue: bool) -> Any:
        with self._lock:  # re-entrant: the base class takes it again
            self.known_users = {u for u in user_ids if u in self.bench_known}
            return super()._import(provider, user_ids, enqueue=enqueue)

    def _user_providers(self, user_id: str) -> list[dict[str, Any]] | None:
        """A lookup (a lost answer's settlement) knows every user of the file, as Vital would:
        not only those of the last request."""
        with self._lock:
            self.known_users = {user_id} if user_id in self.bench_known else set()
            return super()._user_providers(user_id)


# The moto process: prints its endpoint, serves until its stdin closes (the parent stopped or died).
_MOTO_CHILD = """
import sys
from local.moto_server import MotoStack
with MotoStack() as moto:
    print(moto.endpoint_url, flush=True)
    sys.stdin.read()
"""


class MotoProcess:
    """``MotoStack`` in a child interpreter; ``cpu_seconds`` reads its CPU time from /proc."""

    region = DEFAULT_REGION
    START_TIMEOUT_S = 60.0

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self.endpoint_url = ""

    def __enter__(self) -> Self:
        self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and code
            [sys.executable, "-c", _MOTO_CHILD],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None  # PIPE above
        ready, _, _ = select.select([self._process.stdout], [], [], self.START_TIMEOUT_S)
        self.endpoint_url = self._process.stdout.readline().strip() if ready else ""
        if not self.endpoint_url.startswith("http://"):
            self.__exit__()
            msg = "the moto process did not start (see its stderr above)"
            raise RuntimeError(msg)
        return self

    @property
    def env(self) -> dict[str, str]:
        return aws_env(self.endpoint_url, self.region)

    def cpu_seconds(self) -> float:
        """utime + stime of the moto process (0 where /proc is missing)."""
        if self._process is None:
            return 0.0
        try:
            with open(f"/proc/{self._process.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None  # PIPE above
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


class BenchStack:
    """Starts moto and the stand-in, creates the bucket and the API key secret; stops both."""

    def __init__(self) -> None:
        if not hasattr(StandinState, "_import"):
            msg = "local.standin.StandinState._import is gone: update bench.stack.BenchState"
            raise RuntimeError(msg)
        self.state = BenchState(record_full_bodies=False)
        self.moto = MotoProcess()
        self.vital = VitalStandin(self.state, stop_timeout=2.0)
        self._exit = contextlib.ExitStack()
        self.s3: Any = None

    def __enter__(self) -> Self:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.moto)
            stack.enter_context(self.vital)
            session = boto3.session.Session(
                aws_access_key_id="testing",
                aws_secret_access_key="testing",  # noqa: S106 - moto's fake credentials
                region_name=self.moto.region,
            )
            self.s3 = session.client("s3", endpoint_url=self.moto.endpoint_url)
            self.s3.create_bucket(Bucket=BUCKET)
            session.client("secretsmanager", endpoint_url=self.moto.endpoint_url).create_secret(
                Name=SECRET_NAME, SecretString=self.state.api_key
            )
            self._exit = stack.pop_all()  # from here on, __exit__ stops both servers
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._exit.close()

    def upload(self, name: str, data: bytes) -> tuple[str, str]:
        """(key, ETag) of the uploaded object."""
        key = INCOMING + name
        etag = self.s3.put_object(Bucket=BUCKET, Key=key, Body=data)["ETag"].strip('"')
        return key, etag

    def clear_outputs(self, max_pages: int = 100) -> int:
        """Delete everything outside incoming/ (results, checkpoints) left by earlier runs."""
        deleted = 0
        for _ in range(max_pages):
            page = self.s3.list_objects_v2(Bucket=BUCKET, MaxKeys=1000)
            keys = [o["Key"] for o in page.get("Contents", []) if not o["Key"].startswith(INCOMING)]
            if not keys:
                break
            self.s3.delete_objects(
                Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
            deleted += len(keys)
        return deleted

    def child_env(self) -> dict[str, str]:
        """What every contender's process gets on top of a clean environment."""
        return {
            **self.moto.env,
            "AWS_CONFIG_FILE": str(AWS_CONFIG),
            "VITAL_API_BASE_URL": self.vital.url,
            "VITAL_API_KEY_SECRET": SECRET_NAME,
            "BENCH_BUCKET": BUCKET,
            "CHUNK_SIZE": "500",
            "MAX_CONCURRENCY": "8",
            "POWERTOOLS_SERVICE_NAME": "bulk-import",
            "POWERTOOLS_METRICS_NAMESPACE": "VitalBulkImport",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_METRICS_DISABLED": "true",
        }

    def prepare(self, latency_seconds: float, known: frozenset[str]) -> None:
        """Forget the previous run; set this run's latency and known users."""
        self.clear_outputs()
        self.state.reset()
        with self.state._lock:
            self.state.latency_seconds = latency_seconds
            self.state.bench_known = known

    def verify(self, expected: frozenset[str]) -> dict[str, int]:
        """Every row posted exactly once, every request answered 200; raises otherwise."""
        requests = self.state.bulk_import_requests()
        statuses: dict[int, int] = {}
        for record in requests:
            statuses[record.status or 0] = statuses.get(record.status or 0, 0) + 1
        posted = self.state.posted_connections()
        unique = {user_id for _, user_id in posted}
        problems = []
        if set(statuses) != {200}:
            problems.append(f"statuses {statuses}")
        if len(posted) != len(expected):
            problems.append(f"{len(posted)} connections posted, expected {len(expected)}")
        if unique != expected:
            problems.append(
                f"{len(expected - unique)} rows never posted, {len(unique - expected)} unexpected"
            )
        if problems:
            raise AssertionError("contender did not import the file: " + "; ".join(problems))
        return {"requests": len(requests), "connections": len(posted)}

    def post_times(self, started_at: float) -> dict[str, float]:
        """Seconds from ``started_at`` (the contender's epoch clock as its run began) to the
        first and the last request's arrival: its start-up before, its finishing after."""
        stamps = [r.timestamp for r in self.state.bulk_import_requests()]
        if not stamps:
            return {}
        return {"first_post_s": min(stamps) - started_at, "last_post_s": max(stamps) - started_at}
