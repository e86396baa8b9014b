"""The interpreter settings a run tunes are process-wide: overlapping runs restore them once."""

from __future__ import annotations

import gc
import sys

from bulk_import.run.tuning import (
    GC_YOUNG_THRESHOLD,
    POSTING_SWITCH_INTERVAL_S,
    tuned_interpreter,
)


def test_overlapping_runs_restore_the_settings_after_the_last_one_only() -> None:
    before = (sys.getswitchinterval(), gc.get_threshold())
    tuned = (POSTING_SWITCH_INTERVAL_S, (GC_YOUNG_THRESHOLD, *before[1][1:]))
    first, second = tuned_interpreter(), tuned_interpreter()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first run ends while the second goes on
    assert (sys.getswitchinterval(), gc.get_threshold()) == tuned
    second.__exit__(None, None, None)
    assert (sys.getswitchinterval(), gc.get_threshold()) == before
