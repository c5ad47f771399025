"""The alert log: flags as they are raised and cleared, and interventions as they land."""

from __future__ import annotations

import collections
from collections.abc import Sequence

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from gradtui.model.events import Alert, CommandResult, LogLine, RunEnd
from gradtui.ui.controls import Pending
from gradtui.ui.scale import FLAG_GLYPHS, fmt_value

_PLAIN = Style()

MAX_ALERTS_PER_BATCH = 40
"""Beyond this many alerts in one refresh, the rest are summarised in one line."""


class AlertLog(ScrollView, can_focus=False):
    """A scrolling log, newest at the bottom, re-wrapped to the width whenever it changes.

    (RichLog wraps a line once, at the width it had when written, which reads badly
    after a resize in a narrow panel.)
    """

    DEFAULT_CSS = """
    AlertLog {
        height: 1fr;
        background: transparent;
        scrollbar-size-vertical: 1;
        overflow-y: scroll;
        overflow-x: hidden;
    }
    """

    def __init__(
        self,
        *,
        id: str | None = None,  # noqa: A002
        classes: str | None = None,
        max_entries: int = 1000,
        placeholder: str = "no alerts yet",
    ) -> None:
        super().__init__(id=id, classes=classes)
        self.placeholder = placeholder
        self._max_batch = max_entries
        self.entries: collections.deque[Text] = collections.deque(maxlen=max_entries)
        self.count = 0
        self._lines: list[Strip] = []
        self._heights: collections.deque[int] = collections.deque()
        """Lines of each entry in `_lines` (oldest first), while they are wrapped at `_wrap_width`."""
        self._wrap_width = 0

    @property
    def plain_lines(self) -> list[str]:
        """The entries as plain text (oldest first)."""
        return [t.plain for t in self.entries]

    def clear(self) -> None:
        """Forget every entry (a new run starts)."""
        self.entries.clear()
        self.count = 0
        self._lines = []
        self._heights.clear()
        self._sync_size()
        self.scroll_to(y=0, animate=False, immediate=True)
        self.refresh()

    def write(self, *texts: Text) -> None:
        """Append entries; follows the end unless the user scrolled up."""
        if not texts:
            return
        at_end = self.scroll_y >= self.max_scroll_y - 1
        maxlen = self.entries.maxlen or 0
        evicted = max(0, len(self.entries) + len(texts) - maxlen)
        self.entries.extend(texts)
        width = self._wrap_width
        if not width or (evicted and (evicted > len(self._heights) or width != self.scrollable_content_region.width)):
            self._rewrap()
        else:
            # A full log drops its oldest entries: drop their lines rather than wrap every
            # entry again (a flood of alerts would otherwise rewrap 1,000 entries a frame).
            heights = self._heights
            if evicted:
                drop = sum(heights[i] for i in range(evicted))
                for _ in range(evicted):
                    heights.popleft()
                del self._lines[:drop]
            for text in texts[-maxlen:] if maxlen else texts:
                wrapped = self._wrap(text, width)
                heights.append(len(wrapped))
                self._lines.extend(wrapped)
            self._sync_size()
        if at_end:
            self._follow()
        self.refresh()

    def _follow(self) -> None:
        # The virtual size is set synchronously (see _sync_size), so the end is known now.
        self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True)

    def _wrap(self, text: Text, width: int) -> list[Strip]:
        if width <= 0 or not self.is_attached:
            return []
        console = self.app.console
        lines = text.wrap(console, width, overflow="fold")
        out = []
        for line in lines:
            segs = [Segment(seg.text, seg.style or _PLAIN) for seg in line.render(console)]
            out.append(Strip(segs).adjust_cell_length(width, _PLAIN))
        return out

    def _rewrap(self) -> None:
        width = self.scrollable_content_region.width
        self._wrap_width = width
        self._lines = []
        self._heights.clear()
        for t in self.entries:
            wrapped = self._wrap(t, width)
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
        at_end = self.scroll_y >= self.max_scroll_y - 1
        self._rewrap()
        if at_end:
            self._follow()
        self.refresh()

    def render_line(self, y: int) -> Strip:
        i = int(self.scroll_y) + y
        width = self.scrollable_content_region.width
        if 0 <= i < len(self._lines):
            return self._lines[i].crop_extend(0, width, _PLAIN)
        if i == 0 and not self._lines:
            return Strip([Segment(self.placeholder[:width].ljust(width), Style(dim=True))], width)
        return Strip([Segment(" " * width, _PLAIN)], width)

    def add_alerts(self, alerts: Sequence[Alert]) -> None:
        """Log a batch of alerts; in a flood, the newest are kept and the older summarised."""
        extra = len(alerts) - MAX_ALERTS_PER_BATCH
        texts = []
        if extra > 0:
            raised = sum(a.active for a in alerts[:extra])
            texts.append(Text(f"… {extra} earlier alerts ({raised} raised, {extra - raised} cleared)", style="dim"))
        texts.extend(alert_text(a) for a in alerts[max(0, extra) :])
        self.write(*texts)
        self.count += len(alerts)

    def add_sent(self, pending: Pending) -> None:
        self.write(Text(f"… {pending.description} pending", style="yellow"))

    def add_result(self, result: CommandResult, pending: Pending | None) -> None:
        what = pending.description if pending is not None else result.kind
        if result.ok:
            t = Text(f"{result.step} ", style="dim")
            t.append(f"✓ {what} applied", style="bold green")
            if result.message:
                t.append(f": {result.message}", style="green")
        else:
            t = Text(f"{result.step} ", style="dim")
            t.append(f"✗ {what} refused: {result.message}", style="bold red")
        self.write(t)

    def add_end(self, end: RunEnd) -> None:
        style = {"ok": "bold green", "error": "bold red"}.get(end.status, "bold yellow")
        first = end.error.strip().splitlines()[-1] if end.error.strip() else ""
        self.write(Text(f"{end.step} ■ run ended: {end.status}" + (f": {first}" if first else ""), style=style))

    def add_output(self, lines: Sequence[LogLine]) -> None:
        """Log lines printed by the training process (stderr in red, the viewer's own notes bold)."""
        styles = {"stderr": "red", "gradtui": "bold"}
        self.write(*(Text(line.text, style=styles.get(line.stream, "")) for line in lines[-self._max_batch :]))

    def add_note(self, text: str, style: str = "dim") -> None:
        self.write(Text(text, style=style))


def alert_text(a: Alert) -> Text:
    """One line for an alert: step, glyph, kind, layer, value vs threshold."""
    where = a.layer if a.layer is not None else "run"
    t = Text(f"{a.step} ", style="dim")
    if a.active:
        style = {"nonfinite": "bold magenta", "exploding": "bold red", "vanishing": "bold blue"}.get(a.kind, "bold")
        t.append(f"{FLAG_GLYPHS.get(a.kind, '?')} {a.kind} ", style=style)
        t.append(where, style="bold")
        t.append(f" {fmt_value(a.value, 0)}", style="")
    else:
        t.append(f"✓ {a.kind} cleared ", style="green")
        t.append(where, style="")
    return t
