"""The help screen (`?`): every key, the glyphs and the colour scale."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from gradtui.ui.bindings import (
    INTERVENTION_BINDINGS,
    PALETTE_BINDING,
    REPLAY_BINDINGS,
    TOUR_BINDINGS,
    VIEW_BINDINGS,
)
from gradtui.ui.renderables.chart import MARKER_GLYPHS
from gradtui.ui.scale import (
    FLAG_GLYPHS,
    FLAG_MEANINGS,
    FLAG_WORDS,
    GUARD_GLYPHS,
    GUARD_MEANINGS,
    GUARD_WORDS,
    PALETTE,
)
from gradtui.ui.widgets.layer_heatmap import LayerHeatmap

_MARKER_WORDS: dict[str, str] = {
    "set_lr": "learning rate set",
    "set_clip": "clipping changed",
    "set_paused": "paused or resumed",
    "rollback": "guard rolled back",
    "skip": "guard skipped a step",
}
"""What each letter on a chart's axis marks (the letters: `MARKER_GLYPHS`)."""


def key_label(binding: Binding) -> str:
    """How a binding's keys are written for people: "? ", "[ / ]"."""
    keys = [k.strip() for k in binding.key.split(",")]
    nice = {
        "question_mark": "?",
        "plus": "+",
        "minus": "-",
        "equals_sign": "=",
        "left_square_bracket": "[",
        "right_square_bracket": "]",
    }
    return " / ".join(binding.key_display or nice.get(k, k) for k in keys)


def help_sections(*, tour: bool, replay: bool) -> list[tuple[str, list[Binding]]]:
    """The keys that work here: a replay lists its playback keys, a live run its interventions."""
    sections: list[tuple[str, list[Binding]]] = [("Tour (gradtui demo)", TOUR_BINDINGS)] if tour else []
    if replay:
        sections.append(("Replay", REPLAY_BINDINGS))
    else:
        sections.append(("Interventions (sent to the training process)", INTERVENTION_BINDINGS))
    sections.append(("View", [*VIEW_BINDINGS, PALETTE_BINDING]))
    sections.append(("Heatmap", [b for b in LayerHeatmap.BINDINGS if isinstance(b, Binding)]))
    return sections


def help_renderable(sections: Iterable[tuple[str, Iterable[Binding]]]) -> Group:
    """Tables of keys by section, then the legend of glyphs and colours."""
    parts: list[Table | Text] = []
    for title, bindings in sections:
        table = Table(title=title, title_justify="left", title_style="bold", box=None, show_header=False, expand=False)
        table.add_column("key", style="bold cyan", no_wrap=True, min_width=12)
        table.add_column("action")
        for b in bindings:
            table.add_row(key_label(b), b.tooltip or b.description)
        parts.append(table)
        parts.append(Text(""))
    legend = Table(title="Glyphs", title_justify="left", title_style="bold", box=None, show_header=False)
    legend.add_column("glyph", style="bold", min_width=12)
    legend.add_column("meaning")
    for kind, glyph in FLAG_GLYPHS.items():
        legend.add_row(glyph, f"{FLAG_WORDS[kind]}: {FLAG_MEANINGS[kind]}")
    legend.add_row("", "(a × in a heatmap cell or on a chart: a NaN or Inf at those steps)")
    for action in ("rollback", "skip"):
        glyph, word = GUARD_GLYPHS[action], GUARD_WORDS[action]
        legend.add_row(glyph, f"{word}: {GUARD_MEANINGS[action]} (header: guard {glyph}2 {word} = twice so far)")
    marks = "  ".join(f"{MARKER_GLYPHS[kind]} {words}" for kind, words in _MARKER_WORDS.items())
    legend.add_row("chart axis", f"the steps under the columns, and letters where something changed: {marks}")
    parts.append(legend)
    scale = Text("\nHealth view (the default): grey is healthy at any scale; blue-grey to blue is low (the "
                 "layer's per-parameter RMS on its way down to the vanishing ratio of the largest layer's), "
                 "amber is high (well above its own recent level); vivid blue ▼, red ▲ and ○ are the "
                 "vanishing, exploding and dead flags the detectors raised at that step. NO_COLOR: - low, "
                 "· healthy, + high.\n", style="")
    scale.append("Other views (s): log₁₀ of the statistic on a fixed scale, ")
    scale.append("cold", style="bold")
    scale.append(" (vanishing) ")
    for style in PALETTE:
        scale.append(" ", style=style)
    scale.append(" hot", style="bold")
    scale.append(" (exploding). Blank: no value (no gradient, or not sampled yet).\n")
    scale.append("Each column is a bucket of steps and shows the largest value in it; with NO_COLOR, ")
    scale.append("cells use . ░ ▒ ▓ █ from cold to hot.\n")
    scale.append("Interventions are pending until the training process acknowledges them, then show ")
    scale.append("on the charts' axes at the step they took effect. A linear chart rises from zero; ")
    scale.append("a log one says log. A series that never changed is one line: its value and since when.")
    parts.append(scale)
    return Group(*parts)


class HelpScreen(ModalScreen[None]):
    """Every key binding of the viewer, and what the glyphs and colours mean."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "close", "Close", id="help-close"),
        Binding("j,down", "scroll(1)", "Down", show=False),
        Binding("k,up", "scroll(-1)", "Up", show=False),
        Binding("space,pagedown", "scroll(10)", "Page down", show=False),
        Binding("b,pageup", "scroll(-10)", "Page up", show=False),
    ]

    def __init__(self, sections: list[tuple[str, list[Binding]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-dialog", classes="dialog"):
            yield Static(Text("gradtui: keys (Esc or ? to close)", style="bold"), classes="dialog-title")
            yield Static(help_renderable(self.sections), id="help-body")

    def action_close(self) -> None:
        self.dismiss(None)

    def action_scroll(self, lines: int) -> None:
        self.query_one("#help-dialog", VerticalScroll).scroll_relative(y=lines, animate=False)
