"""The interpreter settings a run works best under, set while any run is going."""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# How long this thread keeps the GIL while a posting thread waits for it. A request needs the
# GIL for moments at a time (to send, then for each read of the answer), and with CPython's
# default of 5 ms each of those waits out this thread's parsing: at 50 ms of latency a run takes
# 5-10 % longer. Much lower (0.2 ms) costs more in switching than it saves (bench/README.md).
POSTING_SWITCH_INTERVAL_S = 0.001
# Net new container objects between two collections of the cyclic GC's youngest generation
# (CPython: 2000). Rows in chunks come and go in the thousands; at the default the GC runs ~25
# young and 2-3 older collections per 100k rows (35-65 ms), at this threshold 2 (5-11 ms).
# Reference counting frees nearly everything here; little waits for the cyclic GC.
GC_YOUNG_THRESHOLD = 20_000


class Tuning:
    """The thread switch interval and young GC threshold for runs; the previous ones after the
    last. Lambda runs one invocation at a time, but the settings are process-wide: runs that
    overlap (in tests, or a caller's threads) must not restore them under each other."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._saved: tuple[float, tuple[int, int, int]] = (0.0, (0, 0, 0))

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._runs == 0:
                self._saved = (sys.getswitchinterval(), gc.get_threshold())
                sys.setswitchinterval(POSTING_SWITCH_INTERVAL_S)
                gc.set_threshold(GC_YOUNG_THRESHOLD, *self._saved[1][1:])
            self._runs += 1
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                if self._runs == 0:
                    gc.set_threshold(*self._saved[1])
                    sys.setswitchinterval(self._saved[0])


tuned_interpreter = Tuning()
