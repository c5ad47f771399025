"""Partial repaints: a widget that knows which of its lines changed refreshes only those."""

from __future__ import annotations


def line_runs(lines: list[int]) -> list[tuple[int, int]]:
    """Sorted line numbers as (start, stop) runs of consecutive lines."""
    out: list[tuple[int, int]] = []
    for y in lines:
        if out and out[-1][1] == y:
            out[-1] = (out[-1][0], y + 1)
        else:
            out.append((y, y + 1))
    return out
