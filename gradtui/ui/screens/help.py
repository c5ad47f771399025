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

from gradtui.ui.scale import FLAG_GLYPHS, NONFINITE_GLYPH, PALETTE

_FLAG_MEANING = {
    "nonfinite": "NaN or Inf in the layer's gradient",
    "exploding": "gradient norm far above normal",
    "vanishing": "gradient norm far below normal",
    "dead": "gradient exactly zero (dead units)",
    "loss_spike": "loss jumped (run-wide)",
}


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
        legend.add_row(glyph, f"{kind}: {_FLAG_MEANING.get(kind, '')}")
    legend.add_row(NONFINITE_GLYPH, "heatmap cell with a NaN/Inf gradient (magenta)")
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
    scale.append("on the charts as L (lr), C (clip), P (pause) at the step they took effect.")
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
