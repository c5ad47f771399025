"""What a terminal shows after many partial repaints equals a full repaint of the screen.

The heatmap, the charts and the header repaint only the lines (and, on a heatmap row, the
cells) that changed: a region left out by mistake would leave stale cells on the user's
terminal although every widget's own lines are right. A virtual terminal here applies each
update the app sends, as a terminal would, and is compared with a fresh full render.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from rich.console import Console
from rich.segment import ControlType
from textual._compositor import CompositorUpdate
from textual.app import App
from ui_helpers import manual_app, synthetic_source


class VirtualTerminal:
    """A grid of (character, style) cells that ANSI-free updates are applied to."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.cells: list[list[tuple[str, str]]] = [[(" ", "")] * width for _ in range(height)]

    def apply(self, update: CompositorUpdate, console: Console) -> None:
        x = y = 0
        for seg in update.__rich_console__(console, console.options):  # type: ignore[attr-defined]
            if seg.control:
                for code in seg.control:
                    if code[0] == ControlType.CURSOR_MOVE_TO:
                        x, y = int(code[1]), int(code[2])  # type: ignore[misc]
                continue
            if seg.text == "\n":
                x, y = 0, y + 1
                continue
            style = str(seg.style or "")
            for ch in seg.text:
                if 0 <= y < self.height and 0 <= x < self.width:
                    self.cells[y][x] = (ch, style)
                x += 1

    def lines(self) -> list[str]:
        return ["".join(ch for ch, _ in row) for row in self.cells]


@pytest.mark.parametrize(("scenario", "size"), [("exploding", (160, 48)), ("healthy", (200, 60))])
def test_partial_repaints_leave_the_terminal_as_a_full_repaint_would(
    scenario: str, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(_check(scenario, size, monkeypatch))


async def _check(scenario: str, size: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    term = VirtualTerminal(*size)
    original = App._display

    def display(self: Any, screen: Any, renderable: Any) -> None:
        if isinstance(renderable, CompositorUpdate):
            term.apply(renderable, self.console)
        original(self, screen, renderable)

    monkeypatch.setattr(App, "_display", display)
    source = synthetic_source(scenario, 40, prefill=400, steps_per_poll=7)
    app = manual_app(source)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        for _ in range(40):
            app.poll_source()
            await pilot.pause()
        # Textual keeps each widget's rendered lines until a region of it is refreshed: drop
        # them, so the reference is what every widget draws now.
        for widget in app.screen.walk_children(with_self=True):
            widget._styles_cache.clear()
        full = VirtualTerminal(*size)
        full.apply(app.screen._compositor.render_update(full=True), app.console)
    assert app.store.total_steps > 600
    assert app.store.last is not None
    assert f"step {app.store.last.step}" in " ".join(term.lines()[:2])  # the header followed the run
    shown, wanted = term.lines(), full.lines()
    for y, (got, want) in enumerate(zip(term.cells, full.cells, strict=True)):
        assert got == want, f"line {y} differs:\n  shown {shown[y]!r}\n  want  {wanted[y]!r}"
