"""The status header: run, step, speed, elapsed, loss, lr, clipping, global norm, drops."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.text import Text
from textual.app import RenderResult as TextualRenderResult
from textual.widget import Widget

from gradtui.model.events import FLAG_PRIORITY, CommandResult
from gradtui.model.store import STAT_LABELS, RunStore
from gradtui.ui.controls import Controls, fmt_lr
from gradtui.ui.scale import FLAG_GLYPHS, fmt_duration, fmt_number


class Chips:
    """Rich renderable: short items laid out left to right, wrapped between items only.

    Args:
        lines: Rows of items; each row starts on a new line.
        gap: Cells between two items.
        fold: An item wider than the width is folded at its spaces (else truncated).
    """

    def __init__(self, lines: Sequence[Sequence[Text]], gap: int = 2, *, fold: bool = False) -> None:
        self.lines = lines
        self.gap = gap
        self.fold = fold

    def pack(self, width: int) -> list[Text]:
        """The lines as drawn in `width` cells."""
        out: list[Text] = []
        for items in self.lines:
            line = Text()
            for whole in items:
                pieces = _fold(whole, width) if self.fold else [whole]
                for item in pieces:
                    need = item.cell_len + (self.gap if line.cell_len else 0)
                    if line.cell_len and line.cell_len + need > width:
                        out.append(line)
                        line = Text()
                    if line.cell_len:
                        line.append(" " * self.gap)
                    line.append_text(item)
                if len(pieces) > 1:  # a folded item reads as a paragraph: nothing after it on its line
                    out.append(line)
                    line = Text()
            if line.cell_len:
                line.truncate(max(1, width))
                out.append(line)
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.pack(options.max_width):
            yield from line.render(console)
            yield Segment.line()


def _fold(text: Text, width: int) -> list[Text]:
    """`text` cut at spaces into pieces of at most `width` cells (hard cuts for longer words)."""
    pieces: list[Text] = []
    rest = text
    while rest.cell_len > width > 0:
        plain = rest.plain
        cut = plain.rfind(" ", 0, width + 1)
        if cut <= 0:
            cut = width
        head, tail = rest.divide([cut])
        pieces.append(head)
        rest = tail
        if rest.plain.startswith(" "):
            rest = rest[1:]
    pieces.append(rest)
    return pieces


def _chip(label: str, value: str, style: str = "") -> Text:
    t = Text(label + " ", style="dim") if label else Text()
    t.append(value, style=style or "bold")
    return t


class StatusHeader(Widget):
    """Two to four lines (by width) of run state, recomputed only when the data change."""

    DEFAULT_CSS = """
    StatusHeader {
        height: auto;
        padding: 0 1;
        background: $panel;
    }
    """

    def __init__(self, store: RunStore, controls: Controls, source_name: str, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.store = store
        self.controls = controls
        self.source_name = source_name
        self.stat = "grad_norm"
        self.last_result: CommandResult | None = None
        self.replay_status: str | None = None
        """The replay's own status line (play/pause, speed, position) when playing a record."""
        self._chips = Chips([])
        self._height = -1

    def refresh_data(self, stat: str) -> None:
        """Rebuild the text from the store and the pending commands."""
        self.stat = stat
        self._chips = Chips(self._lines())
        # A layout pass redraws the whole screen: only ask for one when the height changes.
        height = len(self._chips.pack(self.content_region.width or 80))
        self.refresh(layout=height != self._height)
        self._height = height

    def render(self) -> TextualRenderResult:
        return self._chips

    @property
    def plain(self) -> str:
        """The header's text without styles (for tests and logs)."""
        return "\n".join("  ".join(item.plain for item in line) for line in self._chips.lines)

    def _state(self) -> Text:
        st = self.store
        if st.end is not None:
            if st.end.status == "error":
                return Text("✖ crashed", style="bold red")
            if st.end.status == "interrupted":
                return Text("■ interrupted", style="bold yellow")
            return Text("✓ finished", style="bold green")
        if self.replay_status is not None:
            return Text(f"⏵ replay {self.replay_status}", style="bold cyan")
        if st.run is None:
            return Text("… waiting", style="dim")
        paused = self.controls.actual().paused
        pend = self.controls.pending_of("set_paused")
        if pend:
            return Text("… pausing" if pend[-1].target.paused else "… resuming", style="bold yellow")
        return Text("⏸ paused", style="bold yellow reverse") if paused else Text("▶ running", style="bold green")

    def _lines(self) -> list[list[Text]]:
        st = self.store
        run, last = st.run, st.last
        ctl = self.controls
        actual = ctl.actual()
        name = run.run if run is not None else "—"
        line1: list[Text] = [self._state(), _chip("", name, "bold")]
        if self.source_name != name:
            line1.append(Text(self.source_name, style="dim"))
        step = f"{last.step}" if last is not None else "—"
        line1.append(_chip("step", step))
        if last is not None:
            sps = last.steps_per_sec
            line1.append(_chip("", f"{sps:.1f}/s" if math.isfinite(sps) else "—/s"))
        if last is not None and run is not None and run.started > 0:
            line1.append(_chip("elapsed", fmt_duration(last.time - run.started)))
        loss = last.loss if last is not None else None
        loss_style = "bold red" if loss is not None and not math.isfinite(loss) else "bold"
        line1.append(_chip("loss", _fmt_nan(loss), loss_style))
        g = last.global_norm if last is not None else None
        line1.append(_chip("‖g‖", _fmt_nan(g), "bold red" if g is not None and not math.isfinite(g) else "bold"))
        drops = st.dropped_total
        line1.append(_chip("dropped", str(drops), "bold yellow" if drops else "dim"))

        line2: list[Text] = []
        lrs = actual.lrs
        lr_text = fmt_lr(lrs[0]) if lrs else "—"
        schedule = last.schedule_lrs if last is not None else ()
        if lrs and schedule and schedule[0] != lrs[0]:
            lr_text += f" (loop {fmt_lr(schedule[0])})"  # an override is in force
        if len(lrs) > 1:
            lr_text += f" (+{len(lrs) - 1} groups)"
        lr = _chip("lr", lr_text)
        pend_lr = ctl.pending_of("set_lr")
        if pend_lr:
            target = pend_lr[-1].target.lrs
            lr.append(f" → {fmt_lr(target[0]) if target else '?'} pending", style="bold yellow")
        line2.append(lr)

        if actual.clip_mode == "off":
            clip = _chip("clip", "off", "bold")
            if last is not None or run is not None:
                clip.append(f" (≤{actual.clip_threshold:g})", style="dim")
        else:
            clip = _chip("clip", f"{actual.clip_mode} ≤{actual.clip_threshold:g}", "bold cyan")
            if last is not None and last.clipped:
                clip.append(f" clipping ×{last.clip_factor:.2g}", style="bold yellow")
        pend_clip = ctl.pending_of("set_clip")
        if pend_clip:
            t = pend_clip[-1].target
            desc = "off" if t.clip_mode == "off" else f"{t.clip_mode} ≤{t.clip_threshold:g}"
            clip.append(f" → {desc} pending", style="bold yellow")
        line2.append(clip)

        counts: dict[str, int] = {}
        for _layer, kind in st.active_flags:
            counts[kind] = counts.get(kind, 0) + 1
        if counts:
            flags = Text("flags ", style="dim")
            for kind in FLAG_PRIORITY:
                if counts.get(kind):
                    flags.append(f"{FLAG_GLYPHS[kind]}{counts[kind]} {kind}  ", style=_FLAG_STYLE[kind])
            flags.rstrip()
            line2.append(flags)
        else:
            line2.append(_chip("flags", "none", "green"))
        line2.append(_chip("stat", STAT_LABELS.get(self.stat, self.stat)))
        if self.last_result is not None:
            r = self.last_result
            if r.ok:
                line2.append(Text(f"✓ {r.kind.removeprefix('set_')} applied @ step {r.step}", style="green"))
            else:
                line2.append(Text(f"✗ {r.kind.removeprefix('set_')} refused", style="bold red"))
        return [line1, line2]


_FLAG_STYLE = {
    "nonfinite": "bold magenta",
    "exploding": "bold red",
    "vanishing": "bold blue",
    "dead": "bold",
    "loss_spike": "bold yellow",
}


def _fmt_nan(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "nan"
    return fmt_number(value)
