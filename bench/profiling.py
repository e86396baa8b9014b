"""Flat summaries of a pyinstrument session: self and inclusive time per function.

pyinstrument's own flat view folds library frames into their callers, which hides where the
time goes; these walk the raw tree instead. Inclusive time counts a function once per stack,
so recursion is not double counted.
"""

from __future__ import annotations

from typing import Any


def _key(frame: Any) -> str:
    where = frame.file_path_short or frame.file_path or "?"
    return f"{frame.function}  {where}:{frame.line_no or 0}"


def summarise(session: Any, top: int = 40) -> dict[str, Any]:
    root = session.root_frame()
    if root is None:
        return {"total_s": 0.0, "self": [], "inclusive": []}
    self_time: dict[str, float] = {}
    inclusive: dict[str, float] = {}
    stack: list[tuple[Any, frozenset[str]]] = [(root, frozenset())]
    while stack:
        frame, ancestors = stack.pop()
        if frame.is_synthetic:
            continue
        key = _key(frame)
        own = frame.time - sum(c.time for c in frame.children if not c.is_synthetic)
        self_time[key] = self_time.get(key, 0.0) + own
        if key not in ancestors:
            inclusive[key] = inclusive.get(key, 0.0) + frame.time
        below = ancestors | {key}
        stack.extend((child, below) for child in frame.children)
    total = root.time or 1.0

    def ranked(table: dict[str, float], stem: float = 1.01) -> list[dict[str, Any]]:
        rows = [kv for kv in sorted(table.items(), key=lambda kv: -kv[1]) if kv[1] < stem * total]
        rows = rows[:top]
        return [
            {"function": k, "s": round(v, 3), "pct": round(100 * v / total, 1)} for k, v in rows
        ]

    # Inclusive: leave out the stem (handler wrappers that hold ~all the time).
    return {
        "total_s": root.time,
        "self": ranked(self_time),
        "inclusive": ranked(inclusive, stem=0.97),
    }


def render(summary: dict[str, Any], lines: int) -> str:
    out = []
    for title, key in (("self time", "self"), ("inclusive time", "inclusive")):
        out.append(f"== top functions by {title} (main thread, {summary['total_s']:.2f} s) ==")
        out.extend(
            f"{row['pct']:>5.1f}% {row['s']:>7.3f} s  {row['function']}"
            for row in summary[key][:lines]
        )
        out.append("")
    return "\n".join(out)
