"""The status header: run, step, speed, elapsed, loss, lr, clipping, global norm, drops."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.text import Text
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

from gradtui.model.events import FLAG_PRIORITY, CommandResult
from gradtui.model.rate import shown_rate
from gradtui.model.store import STAT_LABELS, RunStore
from gradtui.ui.controls import Controls, fmt_lr, result_words
from gradtui.ui.scale import FLAG_GLYPHS, FLAG_WORDS, GUARD_GLYPHS, GUARD_WORDS, fmt_duration, fmt_number
from gradtui.ui.widgets.themed import ROLE_CLASSES, Look, ink, role_css


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
            yield from ink(line).render(console)
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
    # The label a span, not the text's style: that would mute the value too.
    t = Text().append(label + " ", style="muted") if label else Text()
    t.append(value, style=style or "bold")
    return t


COMPACT_BELOW = 120
"""Narrower than this the header is one line of fixed-width fields, the least important
left out first, so it never wraps and nothing jumps from one step to the next."""


class StatusHeader(Widget):
    """Two lines of run state (one on a narrow screen), recomputed only when the data change.

    Neither line ever wraps: each keeps its fields by rank while they fit (`_by_rank`), a
    field in its short form where only that fits ("guard ⟲2 ⤼0" for "guard ⟲2 rollback
    ⤼0 skip"), and leaves the least important out."""

    DEFAULT_CSS = """
    StatusHeader {
        height: auto;
        padding: 0 1;
        background: $panel;
    }
    """ + role_css("StatusHeader")

    COMPONENT_CLASSES: ClassVar[set[str]] = set(ROLE_CLASSES)

    def __init__(self, store: RunStore, controls: Controls, source_name: str, *, id: str | None = None) -> None:  # noqa: A002
        super().__init__(id=id)
        self.look = Look(self)
        self.store = store
        self.controls = controls
        self.source_name = source_name
        self.stat = "grad_norm"
        self.last_result: CommandResult | None = None
        self.replay_status: str | None = None
        """The replay's own status line (play/pause, speed, position) when playing a record."""
        self._chips = Chips([])
        self._packed: list[Text] = []
        self._strips: list[Strip] | None = None

    def refresh_data(self, stat: str) -> None:
        """Rebuild the text from the store and the pending commands."""
        self.stat = stat
        width = self.content_region.width or 80
        lines = self._lines()
        compact = width + 2 < COMPACT_BELOW  # the padding: the screen's width
        if compact:
            one = [_Item(i.short, i.rank, i.width) if i.short is not None else i for i in lines[0] + lines[1]]
            self._chips = Chips([_by_rank(one, width, pad=True)])
        else:
            self._chips = Chips([_by_rank(line, width) for line in lines])
        packed = self._chips.pack(width)
        if packed == self._packed and self._strips is not None:
            return
        self._packed, self._strips = packed, None
        # A layout pass redraws the whole screen: only ask for one when the height changes.
        # Against the height drawn, not the last one asked for: a layout asked for while
        # the screen is being laid out (a resize) can be lost.
        self.refresh(layout=len(packed) != self.size.height)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return max(1, len(self._chips.pack(width)))

    def render_line(self, y: int) -> Strip:
        # Line API: two lines of text straight to strips (Textual's path for a Rich
        # renderable costs about 1 ms a frame here).
        width = self.content_region.width
        if self._strips is None or (self._strips and self._strips[0].cell_length != width):
            console = self.app.console
            self._packed = self._chips.pack(width)
            self._strips = [self.look.line(self.look.ink(t).render(console), width) for t in self._packed]
        if 0 <= y < len(self._strips):
            return self._strips[y]
        return self.look.blank(width)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self.look.forget()
        self._strips = None

    def on_resize(self) -> None:
        # After the layout that resized it: a layout asked for during one is lost, which left
        # a two-line header one line high (its flags unseen) when data came before the first.
        self.call_after_refresh(self.refresh_data, self.stat)

    @property
    def plain(self) -> str:
        """The header's text without styles (for tests and logs)."""
        return "\n".join("  ".join(item.plain for item in line) for line in self._chips.lines)

    def _state(self) -> Text:
        st = self.store
        if self.replay_status is not None:  # scrubbing a record: where the replay is matters most
            return Text(f"⏵ replay {self.replay_status}", style="bold note")
        if st.end is not None:
            if st.end.status == "error":
                return Text("✖ crashed", style="bold bad")
            if st.end.status == "interrupted":
                return Text("■ interrupted", style="bold warn")
            return Text("✓ finished", style="bold ok")
        if st.run is None:
            return Text("… waiting", style="muted")
        paused = self.controls.actual().paused
        pend = self.controls.pending_of("set_paused")
        if pend:
            return Text("… pausing" if pend[-1].target.paused else "… resuming", style="bold warn")
        return Text("⏸ paused", style="bold warn reverse") if paused else Text("▶ running", style="bold ok")

    def _lines(self) -> list[list[_Item]]:
        st = self.store
        run, last = st.run, st.last
        ctl = self.controls
        actual = ctl.actual()
        name = run.run if run is not None else "—"
        line1: list[_Item] = [_ranked(self._state(), 0, 10), _ranked(_chip("", name, "bold"), 7)]
        if self.source_name != name:
            line1.append(_ranked(Text(self.source_name, style="muted"), 6))
        # The newest step seen, sampled or not: loss and global norm arrive at every step.
        step = f"{st.last_step}" if st.last_step >= 0 else "—"
        line1.append(_ranked(_chip("step", step), 1, 11))
        if last is not None:
            sps = shown_rate(last.steps_per_sec, paused=actual.paused, ended=st.end is not None)
            line1.append(_ranked(_chip("", f"{sps:.1f}/s" if sps is not None and math.isfinite(sps) else "—/s"), 6, 8))
        if last is not None and st.stride > 1:
            # Per-layer statistics every few steps: the overhead budget chose it, or `every=`.
            line1.append(_ranked(_chip("sampled", f"1/{st.stride}"), 9))
        if last is not None and run is not None and run.started > 0:
            line1.append(_ranked(_chip("elapsed", fmt_duration(last.time - run.started)), 8))
        loss = st.last_loss if st.run_count else None
        loss_style = "bold bad" if loss is not None and not math.isfinite(loss) else "bold"
        line1.append(_ranked(_chip("loss", _fmt_nan(loss), loss_style), 2, 15))
        g = st.last_global_norm if st.run_count else None
        line1.append(
            _ranked(_chip("‖g‖", _fmt_nan(g), "bold bad" if g is not None and not math.isfinite(g) else "bold"), 5, 14)
        )
        drops = st.dropped_total
        line1.append(_ranked(_chip("dropped", str(drops), "bold warn" if drops else "muted"), 4 if drops else 10))

        line2: list[_Item] = []
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
            lr.append(f" → {fmt_lr(target[0]) if target else '?'} pending", style="bold warn")
        line2.append(_ranked(lr, 3))

        if actual.clip_mode == "off":
            clip = _chip("clip", "off", "bold")
            if last is not None or run is not None:
                clip.append(f" (≤{actual.clip_threshold:g})", style="muted")
        else:
            clip = _chip("clip", _clip_label(actual.clip_mode, actual.clip_threshold), "bold note")
            if last is not None and last.clipped:
                clip.append(f" clipping ×{last.clip_factor:.2g}", style="bold warn")
        pend_clip = ctl.pending_of("set_clip")
        if pend_clip:
            t = pend_clip[-1].target
            desc = "off" if t.clip_mode == "off" else _clip_label(t.clip_mode, t.clip_threshold)
            clip.append(f" → {desc} pending", style="bold warn")
        line2.append(_ranked(clip, 4))
        if run is not None and run.guard:
            acts = {a: st.guard_counts.get(a, 0) for a in ("rollback", "skip")}
            if any(acts.values()):
                said = [f"{GUARD_GLYPHS[a]}{n}" for a, n in acts.items()]
                # As the flags chip says its counts: "guard ⟲2 rollback  ⤼0 skip".
                words = "  ".join(f"{count} {GUARD_WORDS[a]}" for a, count in zip(acts, said, strict=True))
                full = _chip("guard", words, "bold note")
                line2.append(_ranked(full, 7, short=_chip("guard", " ".join(said), "bold note")))
            else:
                line2.append(_ranked(_chip("guard", "on", "bold"), 7))

        counts: dict[str, int] = {}
        for _layer, kind in st.active_flags:
            counts[kind] = counts.get(kind, 0) + 1
        if counts:
            flags = Text().append("flags ", style="muted")
            short = Text()
            for kind in FLAG_PRIORITY:
                if counts.get(kind):
                    # The gaps unstyled: under NO_COLOR each flag is a reversed chip of its own.
                    flags.append(f"{FLAG_GLYPHS[kind]}{counts[kind]} {FLAG_WORDS[kind]}", style=kind).append("  ")
                    short.append(f"{FLAG_GLYPHS[kind]}{counts[kind]}", style=kind).append(" ")
            flags.rstrip()
            short.rstrip()
            line2.append(_ranked(flags, 1, short=short))
        else:
            line2.append(_ranked(_chip("flags", "none", "ok"), 5))
        line2.append(_ranked(_chip("stat", STAT_LABELS.get(self.stat, self.stat)), 9))
        if self.last_result is not None:
            r = self.last_result
            what = result_words(r)
            if r.ok:
                line2.append(_ranked(Text(f"✓ {what} applied @ step {r.step}", style="ok"), 8))
            else:
                line2.append(_ranked(Text(f"✗ {what} refused", style="bold bad"), 6))
        return [line1, line2]


@dataclass(frozen=True)
class _Item:
    """A header field: its text, its rank in the one-line header (0 is kept first) and the
    width it is padded to there, so that it keeps its place as its value changes."""

    text: Text
    rank: int
    width: int = 0
    short: Text | None = None
    """The field in the one-line header, when shorter than `text`."""


def _ranked(text: Text, rank: int, width: int = 0, short: Text | None = None) -> _Item:
    return _Item(text, rank, width, short)


def _by_rank(items: list[_Item], width: int, *, pad: bool = False) -> list[Text]:
    """A line of fields that fits `width` cells: taken by rank (0 first) while they fit, each
    whole or in its short form, and drawn in their order. `pad`: each field padded to its
    width (a one-line header whose fields keep their places as values change)."""
    chosen: dict[int, Text] = {}
    used = 0
    for i in sorted(range(len(items)), key=lambda i: (items[i].rank, i)):
        gap = 2 if chosen else 0
        for text in (items[i].text, items[i].short):
            if text is None:
                continue
            need = max(text.cell_len, items[i].width if pad else 0) + gap
            if used + need <= width:
                chosen[i] = text
                used += need
                break
    out = []
    last = max(chosen, default=-1)
    for i in sorted(chosen):
        text = chosen[i]
        fill = items[i].width - text.cell_len
        if pad and fill > 0 and i != last:
            text = text.copy()
            text.append(" " * fill)
        out.append(text)
    return out


def _fmt_nan(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "nan"
    return fmt_number(value)


def _clip_label(mode: str, threshold: float) -> str:
    """ "norm ≤1", "value ≤0.5"; adaptive clipping's threshold is a z-score: "auto 2.5σ"."""
    return f"auto {threshold:g}σ" if mode == "auto" else f"{mode} ≤{threshold:g}"
