"""floor1: the floor's work over one keep-alive connection, as the issue words the floor.

Each POST is answered before reading goes on. Reported for context next to ``floor`` (see
bench.contenders.floor for why the targets use that one).
"""

from __future__ import annotations

from bench.contenders.floor import run_one_connection as run

__all__ = ["run"]
