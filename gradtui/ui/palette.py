"""The command palette's entries (ctrl+p): every action that works on the screen it was
opened from, each with its key, then a theme switch per theme, then what Textual adds that
the app has no key for (maximize, screenshot)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

from textual.app import SystemCommand
from textual.binding import Binding

from gradtui.ui.bindings import INTERVENTION_BINDINGS, REPLAY_BINDINGS, TOUR_BINDINGS, VIEW_BINDINGS
from gradtui.ui.screens.help import key_label
from gradtui.ui.themes import THEMES

_NOT_LISTED = ("theme", "quit-ctrl-c")
"""Bindings the palette lists otherwise (one entry per theme) or twice (quit)."""


def palette_bindings(heatmap: Iterable[Binding]) -> list[Binding]:
    """The app's bindings, and the heatmap's as app actions (`on_heatmap`)."""
    mine = [*TOUR_BINDINGS, *INTERVENTION_BINDINGS, *REPLAY_BINDINGS, *VIEW_BINDINGS]
    on_heatmap = [Binding(b.key, f"on_heatmap({b.action!r})", b.description, tooltip=b.tooltip) for b in heatmap]
    return [b for b in mine if b.id not in _NOT_LISTED] + on_heatmap


def palette_commands(
    bindings: Iterable[Binding],
    allowed: Callable[[str], bool],
    run_action: Callable[[str], Any],
    use_theme: Callable[[str], None],
) -> Iterable[SystemCommand]:
    """One command per binding whose action is `allowed`, then one per theme."""
    for binding in bindings:
        if not allowed(binding.action.partition("(")[0]):
            continue
        yield SystemCommand(
            binding.tooltip or binding.description, f"key: {key_label(binding)}", partial(run_action, binding.action)
        )
    for theme, label in THEMES.items():
        yield SystemCommand(f"Theme: {label}", "colours (T cycles the themes)", partial(use_theme, theme))


TEXTUAL_LEFT_OUT = frozenset({"Theme", "Quit", "Keys"})
"""Textual's entries that the app's own replace: its theme picker lists themes the panes do not
follow (`THEMES` are those they do), a Quit beside the app's (which asks first when that stops
a run), and a keys panel beside `?`."""


def textual_commands(commands: Iterable[SystemCommand]) -> Iterator[SystemCommand]:
    """Textual's own palette entries, less `TEXTUAL_LEFT_OUT`."""
    return (c for c in commands if c.title not in TEXTUAL_LEFT_OUT)
