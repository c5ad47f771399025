"""The alert log: flags as they are raised and cleared, and interventions as they land.

Alerts are grouped by event: one line per step, kind and direction ("step 7 ▲ exploding:
6 layers (0, 2, 4 …) and the global norm, up to ‖g‖ 8.9e+02"), however many layers
tripped at once; enter on the line under the cursor, or a click on it, opens the group
to one line per layer. Numbers follow `gradtui.ui.numbers`, and every number carries
its name or unit ("‖g‖ 6.3e+02", "12 NaN/Inf values"), so none can read as part of a
layer name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from gradtui.model.events import Alert, CommandResult, GuardAction, LogLine, RunEnd
from gradtui.ui.controls import Pending, result_words
from gradtui.ui.numbers import fmt_count, fmt_sig
from gradtui.ui.scale import END_WORDS, FLAG_GLYPHS, FLAG_WORDS, GUARD_GLYPHS
from gradtui.ui.widgets.themed import PLAIN_ROLES, ROLE_CLASSES, ROLES, Look, ink, role_css

MAX_GROUPS_PER_BATCH = 40
"""Beyond this many alert groups in one refresh, the older ones are summarised in one line."""
NAMES_SHOWN = 3
"""Layer names a group's line spells out before "…" (the expanded group lists them all)."""

_RUN_UNIT: dict[str, str] = {"exploding": "the global norm", "nonfinite": "the global norm", "loss_spike": "the loss"}
"""What a run-wide alert (no layer) of each kind is about."""


@dataclass
class AlertGroup:
    """The alerts of one event: one step, one kind, raised or cleared."""

    step: int
    kind: str
    active: bool
    level: str = "warning"
    alerts: list[Alert] = field(default_factory=list)
    expanded: bool = False

    @property
    def key(self) -> tuple[int, str, bool, str]:
        return (self.step, self.kind, self.active, self.level)


Entry = Text | AlertGroup


# ---------------------------------------------------------------- words


def _name(layer: str | None, kind: str) -> str:
    if layer is None:
        return _RUN_UNIT.get(kind, "the run")
    return layer or "(root)"


def value_phrase(a: Alert) -> str:
    """What tripped (or released) an alert, with its unit: "‖g‖ 6.3e+02", "12 NaN/Inf values"."""
    v = a.value
    if a.kind == "nonfinite" and math.isfinite(v) and v >= 1 and v == int(v):
        return f"{fmt_count(v)} NaN/Inf values"
    if a.kind == "vanishing":
        return f"ratio {fmt_sig(v)}"
    if a.kind == "loss_spike":
        return f"loss {fmt_sig(v)}"
    return f"‖g‖ {fmt_sig(v)}"


def threshold_phrase(a: Alert) -> str:
    """The threshold an alert crossed ("threshold 1.2e+02"), or "" where it has none (NaN/Inf, dead)."""
    if a.kind in ("nonfinite", "dead") or not math.isfinite(a.threshold):
        return ""
    return f"threshold {fmt_sig(a.threshold)}"


def _extreme(values: list[float], largest: bool) -> float:
    known = [v for v in values if not math.isnan(v)]
    if not known:
        return math.nan
    return max(known) if largest else min(known)


def group_summary(g: AlertGroup) -> str:
    """The one number of a raised group: its worst value ("up to ‖g‖ 8.9e+02"), "" when none says more."""
    if not g.active:
        return ""
    values = [a.value for a in g.alerts]
    if g.kind == "exploding":
        return f"up to ‖g‖ {fmt_sig(_extreme(values, True))}"
    if g.kind == "vanishing":
        return f"ratio down to {fmt_sig(_extreme(values, False))}"
    if g.kind == "nonfinite":
        counts = [v for v in values if math.isfinite(v) and v >= 1 and v == int(v)]
        return f"{fmt_count(sum(counts))} NaN/Inf values" if counts else ""
    return ""


def members_phrase(g: AlertGroup) -> str:
    """Who the group is about: "layer fc1", "6 layers (0, 2, 4 …)", "… and the global norm"."""
    names = [_name(a.layer, g.kind) for a in g.alerts if a.layer is not None]
    run = [_name(None, g.kind) for a in g.alerts if a.layer is None]
    parts = []
    if names:
        shown = ", ".join(names[:NAMES_SHOWN]) + (" …" if len(names) > NAMES_SHOWN else "")
        parts.append(f"layer {shown}" if len(names) == 1 else f"{len(names)} layers ({shown})")
    if run:
        parts.append(run[0])
    return " and ".join(parts)


def _kind_label(kind: str, active: bool, level: str) -> tuple[str, str]:
    """The words and role of a kind: "▲ exploding" (a warning, the plain flag), "▲ exploding
    (critical)" underlined, "▲ exploding (info)" muted: an info-level alert is no flag."""
    if not active:
        return f"✓ {FLAG_WORDS.get(kind, kind)} cleared", "muted" if level == "info" else "ok"
    label = f"{FLAG_GLYPHS.get(kind, '?')} {FLAG_WORDS.get(kind, kind)}" + ("" if level == "warning" else f" ({level})")
    if level == "info":
        return label, "muted"
    role = kind if kind in ROLES else "bold"
    return label, f"{role} underline" if level == "critical" else role


def group_lines(g: AlertGroup, roles: Mapping[str, Style] = PLAIN_ROLES) -> list[Text]:
    """A group's line, and when expanded one line per alert in it, in the colours of `roles`."""
    return [ink(t, roles) for t in _group_texts(g)]


def _group_texts(g: AlertGroup) -> list[Text]:
    head = Text()
    head.append("▾ " if g.expanded else "▸ ", style="muted")
    head.append(f"step {g.step} ", style="muted")
    label, style = _kind_label(g.kind, g.active, g.level)
    head.append(label, style=style)
    head.append(": ")
    if g.kind == "loss_spike" and len(g.alerts) == 1:
        # The loss is its own subject: "step 22 ^ loss_spike: loss 4.4e+03 (threshold 5.5e+02)".
        _append_value(head, g.alerts[0])
    else:
        head.append(members_phrase(g), style="bold" if g.active and g.level != "info" else "")
        summary = group_summary(g)
        if summary:
            head.append(f", {summary}")
    lines = [head]
    if g.expanded:
        for a in g.alerts:
            line = Text("    ")
            line.append(_who(a), style="bold")
            line.append(": ")
            _append_value(line, a)
            lines.append(line)
    return lines


def _who(a: Alert) -> str:
    return _name(a.layer, a.kind) if a.layer is None else f"layer {_name(a.layer, a.kind)}"


def _append_value(t: Text, a: Alert) -> None:
    t.append(value_phrase(a))
    th = threshold_phrase(a)
    if th:
        t.append(f" ({th})", style="muted")


def alert_text(a: Alert, *, layer: bool = True, roles: Mapping[str, Style] = PLAIN_ROLES) -> Text:
    """One alert on its own: "step 7 ▲ exploding: layer 4, ‖g‖ 6.3e+02 (threshold 1.2e+02)";
    without `layer` (a page about that layer already) the "layer 4, " is left out."""
    t = Text().append(f"step {a.step} ", style="muted")
    label, style = _kind_label(a.kind, a.active, a.level)
    t.append(label, style=style)
    t.append(": ")
    if layer and a.kind != "loss_spike":
        t.append(_who(a), style="bold" if a.active else "")
        t.append(", ")
    _append_value(t, a)
    return ink(t, roles)


# ---------------------------------------------------------------- widget


class AlertLog(ScrollView):
    """A scrolling log, newest at the bottom, re-wrapped to the width whenever it changes.

    (RichLog wraps a line once, at the width it had when written, which reads badly
    after a resize in a narrow panel.) Focused (tab, or a click), up/down move a cursor
    over the entries and enter opens or closes the alert group under it.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "toggle_group", "open/close", show=False, id="alerts-toggle"),
        Binding("up,k", "cursor(-1)", "previous", show=False, id="alerts-up"),
        Binding("down,j", "cursor(1)", "next", show=False, id="alerts-down"),
        Binding("home", "cursor_to(0)", "first", show=False, id="alerts-first"),
        Binding("end", "cursor_to(-1)", "last", show=False, id="alerts-last"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {"alert-log--cursor", *ROLE_CLASSES}

    DEFAULT_CSS = (
        role_css("AlertLog")
        + """
    AlertLog {
        height: 1fr;
        background: transparent;
        scrollbar-size-vertical: 1;
        overflow-y: scroll;
        overflow-x: hidden;
    }
    AlertLog > .alert-log--cursor { text-style: reverse; }
    """
    )

    def __init__(
        self,
        *,
        id: str | None = None,  # noqa: A002
        classes: str | None = None,
        max_entries: int = 1000,
        placeholder: str = "no alerts yet",
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.look = Look(self)
        self.placeholder = placeholder
        self.max_entries = max_entries
        self.entries: list[Entry] = []
        """Oldest first: plain lines, and alert groups."""
        self.count = 0
        """Alerts logged (every one, grouped or summarised)."""
        self.cursor: int | None = None
        """Index in `entries` of the entry under the cursor (shown while focused)."""
        self._lines: list[Strip] = []
        self._heights: list[int] = []
        """Lines of each entry in `_lines`, while they are wrapped at `_wrap_width`."""
        self._wrap_width = 0
        self._following = True
        """The view is at the end (new lines scroll it on), as it is until the user scrolls up."""
        self._cursor_cache: tuple[object, tuple[int, int]] | None = None
        self._open: dict[tuple[int, str, bool, str], AlertGroup] = {}
        """Groups of the newest step, which later alerts of that step join."""
        self._skips: tuple[int, int, int] | None = None
        self._restyled = False
        """The theme changed since the lines were wrapped."""
        """The guard's run of skipped steps on the last line: (first step, last step, entry index)."""

    @property
    def plain_lines(self) -> list[str]:
        """The entries as plain text, oldest first (an expanded group gives several lines)."""
        return [t.plain for entry in self.entries for t in self._texts(entry)]

    @property
    def groups(self) -> list[AlertGroup]:
        """The alert groups logged, oldest first."""
        return [e for e in self.entries if isinstance(e, AlertGroup)]

    def clear(self) -> None:
        """Forget every entry (a new run starts)."""
        self.entries.clear()
        self.count = 0
        self.cursor = None
        self._open.clear()
        self._lines = []
        self._heights = []
        self._sync_size()
        self.scroll_to(y=0, animate=False, immediate=True)
        self.refresh()

    # ------------------------------------------------------------ entries

    @staticmethod
    def _texts(entry: Entry) -> list[Text]:
        return _group_texts(entry) if isinstance(entry, AlertGroup) else [entry]

    def write(self, *texts: Text) -> None:
        """Append plain entries; follows the end unless the user scrolled up."""
        self._append(list(texts))

    def _at_end(self) -> bool:
        return self._following

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        # Kept as the user left it: a resize that shrinks the log moves its end, not the user.
        self._following = new_value >= self.max_scroll_y - 1

    def _append(self, new: list[Entry]) -> None:
        if not new:
            return
        at_end = self._at_end()
        new = new[-self.max_entries :]
        evicted = max(0, len(self.entries) + len(new) - self.max_entries)
        if evicted:
            for gone in self.entries[:evicted]:
                if isinstance(gone, AlertGroup):
                    self._open.pop(gone.key, None)
            del self.entries[:evicted]
            if self.cursor is not None:
                self.cursor = max(0, self.cursor - evicted)
        self.entries.extend(new)
        width = self._wrap_width
        if not width or width != self.scrollable_content_region.width or evicted > len(self._heights):
            self._rewrap()
        else:
            # A full log drops its oldest entries: drop their lines rather than wrap every
            # entry again (a flood of alerts would otherwise rewrap 1,000 entries a frame).
            if evicted:
                del self._lines[: sum(self._heights[:evicted])]
                del self._heights[:evicted]
            for entry in new:
                wrapped = self._wrap_entry(entry, width)
                self._heights.append(len(wrapped))
                self._lines.extend(wrapped)
            self._sync_size()
        if at_end:
            self._follow()
        self.refresh()

    def _replace(self, index: int) -> None:
        """Wrap one entry again after it changed (a group that grew, opened or closed)."""
        if not self._wrap_width or len(self._heights) != len(self.entries):
            self._rewrap()
            return
        start = sum(self._heights[:index])
        wrapped = self._wrap_entry(self.entries[index], self._wrap_width)
        self._lines[start : start + self._heights[index]] = wrapped
        self._heights[index] = len(wrapped)
        self._sync_size()

    def _follow(self) -> None:
        # The virtual size is set synchronously (see _sync_size), so the end is known now.
        self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True)

    def _wrap(self, text: Text, width: int) -> list[Strip]:
        if width <= 0 or not self.is_attached:
            return []
        console = self.app.console
        lines = self.look.ink(text).wrap(console, width, overflow="fold")
        return [self.look.line(line.render(console), width) for line in lines]

    def _wrap_entry(self, entry: Entry, width: int) -> list[Strip]:
        return [strip for text in self._texts(entry) for strip in self._wrap(text, width)]

    def _rewrap(self) -> None:
        width = self.scrollable_content_region.width
        self._wrap_width = width
        self._lines = []
        self._heights = []
        for entry in self.entries:
            wrapped = self._wrap_entry(entry, width)
            self._heights.append(len(wrapped))
            self._lines.extend(wrapped)
        self._sync_size()

    def _sync_size(self) -> None:
        size = Size(self._wrap_width, len(self._lines))
        if size == self.virtual_size:
            return
        # Setting `virtual_size` asks for a layout of the whole screen (tens of ms at
        # 200x60) on every alert; this widget's size does not depend on its content, and
        # its scrollbar is always shown, so updating the scrollbar is enough.
        self.set_reactive(Widget.virtual_size, size)
        self._scroll_update(size)

    def on_resize(self, event: events.Resize) -> None:
        at_end = self._at_end()
        self._rewrap()
        if at_end:
            self._follow()
        self.refresh()

    # ------------------------------------------------------------ drawing

    def _span(self, index: int) -> tuple[int, int]:
        """First line and line count of an entry."""
        return sum(self._heights[:index]), self._heights[index] if index < len(self._heights) else 0

    def render_line(self, y: int) -> Strip:
        if self._restyled:
            self._restyled = False
            if self._wrap_width:
                self._rewrap()
        i = int(self.scroll_y) + y
        width = self.scrollable_content_region.width
        if 0 <= i < len(self._lines):
            strip = self._lines[i].crop_extend(0, width, self.look.base)
            if self.has_focus and self.cursor is not None and self.cursor < len(self._heights):
                start, height = self._cursor_lines()
                if start <= i < start + height:
                    strip = strip.apply_style(self.look.part("alert-log--cursor"))
            return strip
        if i == 0 and not self._lines:
            return self.look.line([Segment(self.placeholder, self.look.roles["muted"])], width)
        return self.look.blank(width)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self.look.forget()
        # The lines keep the colours they were wrapped in; wrapped again when next drawn,
        # as the component styles are only updated after this call.
        self._restyled = True

    def _cursor_lines(self) -> tuple[int, int]:
        """First line and line count of the cursor's highlight: an entry, or a group's own
        line (its layers below stay readable). Cached: this is asked for every line drawn."""
        assert self.cursor is not None
        entry = self.entries[self.cursor]
        grown = (len(entry.alerts), entry.expanded) if isinstance(entry, AlertGroup) else None
        key = (self.cursor, id(entry), grown, self._wrap_width, len(self._lines))
        if self._cursor_cache is None or self._cursor_cache[0] != key:
            start, height = self._span(self.cursor)
            if isinstance(entry, AlertGroup):
                height = min(height, len(self._wrap(_group_texts(entry)[0], self._wrap_width)))
            self._cursor_cache = (key, (start, height))
        return self._cursor_cache[1]

    # ------------------------------------------------------------ cursor and groups

    def entry_at(self, line: int) -> int | None:
        """The entry that wrapped line `line` (0: the first line of the log) belongs to."""
        if line < 0:
            return None
        start = 0
        for index, height in enumerate(self._heights):
            if line < start + height:
                return index
            start += height
        return None

    def _show_cursor(self) -> None:
        if self.cursor is None or self.cursor >= len(self._heights):
            return
        start, height = self._span(self.cursor)
        self.scroll_to_region(Region(0, start, 1, max(1, height)), animate=False, immediate=True)
        self.refresh()

    def on_focus(self) -> None:
        if self.cursor is None and self.entries:
            self.cursor = len(self.entries) - 1
        self._show_cursor()

    def on_blur(self) -> None:
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        if not self.entries:
            return
        current = len(self.entries) - 1 if self.cursor is None else self.cursor
        self.cursor = max(0, min(len(self.entries) - 1, current + delta))
        self._show_cursor()

    def action_cursor_to(self, index: int) -> None:
        if self.entries:
            self.cursor = index % len(self.entries)
            self._show_cursor()

    def action_toggle_group(self) -> None:
        """Open or close the alert group under the cursor."""
        if self.cursor is not None and self.cursor < len(self.entries):
            self.toggle(self.cursor)

    def toggle(self, index: int) -> bool:
        """Open or close the group at `entries[index]`; False when that entry is not a group."""
        entry = self.entries[index]
        if not isinstance(entry, AlertGroup):
            return False
        at_end = self._at_end()
        entry.expanded = not entry.expanded
        self._replace(index)
        if at_end and index == len(self.entries) - 1:
            self._follow()
        self._show_cursor()
        self.refresh()
        return True

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        index = self.entry_at(int(self.scroll_y) + offset.y)
        if index is None:
            return
        self.cursor = index
        self.toggle(index)
        self.refresh()

    # ------------------------------------------------------------ what is logged

    def add_alerts(self, alerts: Sequence[Alert]) -> None:
        """Log a batch of alerts, grouped by step, kind, direction and level: an alert joins the group
        of its event if one is open (even from an earlier batch), else starts one. In a flood
        of groups, the newest are kept and the older summarised."""
        fresh: list[AlertGroup] = []
        grown: set[int] = set()
        for a in alerts:
            if self._open and a.step > max(key[0] for key in self._open):
                self._open.clear()  # a newer step: the older groups are complete
            key = (a.step, a.kind, a.active, a.level)
            group = self._open.get(key)
            if group is None:
                group = self._open[key] = AlertGroup(a.step, a.kind, a.active, a.level)
                fresh.append(group)
            elif all(group is not g for g in fresh):
                grown.add(id(group))
            group.alerts.append(a)
        for index, entry in enumerate(self.entries):
            if isinstance(entry, AlertGroup) and id(entry) in grown:
                self._replace(index)
        extra = len(fresh) - MAX_GROUPS_PER_BATCH
        new: list[Entry] = []
        if extra > 0:
            older = fresh[:extra]
            raised = sum(len(g.alerts) for g in older if g.active)
            cleared = sum(len(g.alerts) for g in older if not g.active)
            for g in older:
                self._open.pop(g.key, None)
            new.append(
                Text(f"… {extra} earlier alert events ({raised} alerts raised, {cleared} cleared)", style="muted")
            )
        new.extend(fresh[max(0, extra) :])
        self.count += len(alerts)
        if new:
            self._append(new)
        elif grown:
            if self._at_end():
                self._follow()
            self.refresh()

    def add_sent(self, pending: Pending) -> None:
        self.write(Text(f"… {pending.description} pending", style="warn"))

    def add_result(self, result: CommandResult, pending: Pending | None) -> None:
        what = result_words(result, pending)
        t = Text().append(f"step {result.step} ", style="muted")
        if result.ok:
            t.append(f"✓ {what} applied", style="bold ok")
            if result.message:
                t.append(f": {result.message}", style="ok")
        else:
            t.append(f"✗ {what} refused: {result.message}", style="bold bad")
        self.write(t)

    def add_guard(self, action: GuardAction) -> None:
        """What the guard did. A run of skipped steps is one line that grows ("steps 41-60 ⤼ ...")."""
        symbol = GUARD_GLYPHS.get(action.action, "•")
        if action.action == "lr_cut":
            return  # its rollback's line says the new learning rate
        if action.action == "skip" and self._skips is not None:
            first, last, index = self._skips
            if last == action.step - 1 and index == len(self.entries) - 1:
                self._skips = (first, action.step, index)
                count = action.step - first + 1
                self.entries[index] = Text(
                    f"steps {first}-{action.step} {symbol} {count} non-finite steps skipped (updates not applied)",
                    style="bold note",
                )
                self._replace(index)
                self.refresh()
                return
        t = Text().append(f"step {action.step} {symbol} ", style="muted")
        t.append(action.detail, style="bold note")
        self.write(t)
        self._skips = (action.step, action.step, len(self.entries) - 1) if action.action == "skip" else None

    def add_end(self, end: RunEnd) -> None:
        style = {"ok": "bold ok", "error": "bold bad"}.get(end.status, "bold warn")
        first = end.error.strip().splitlines()[-1] if end.error.strip() else ""
        ended = END_WORDS.get(end.status, end.status)
        self.write(Text(f"step {end.step} ■ run {ended}" + (f": {first}" if first else ""), style=style))

    def add_output(self, lines: Sequence[LogLine]) -> None:
        """Log lines printed by the training process (stderr in the warning colour, the viewer's own notes bold)."""
        styles = {"stderr": "warn", "gradtui": "bold"}
        self.write(*(Text(line.text, style=styles.get(line.stream, "")) for line in lines[-self.max_entries :]))

    def add_note(self, text: str, style: str = "muted") -> None:
        """A line of the viewer's own; `style` is Rich words and a role ("bold bad", see `themed.ROLES`)."""
        self.write(Text(text, style=style))
