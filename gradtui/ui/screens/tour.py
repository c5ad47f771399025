"""The tour's texts: the chapter heading, the key line, and the story dialog (`t`).

The key line is the same everywhere (banner, side panel, dialog): where you are, what
`.` leads to, and which keys the chapter asks you to try.
"""

from __future__ import annotations

from typing import ClassVar

from rich.markdown import Markdown
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from gradtui.ui.tour import SUGGESTIBLE_KEYS, Tour
from gradtui.ui.widgets.status import Chips

NEXT_KEY = "."
PREVIOUS_KEY = ","
STORY_KEY = "t"
RESTART_KEY = "r"

_KEY = "bold cyan"


def heading(tour: Tour) -> Text:
    """The chapter heading: "Chapter i/N · title" (just the title for a one-chapter tour)."""
    text = Text()
    if tour.position:
        text.append(tour.position, style="bold reverse")
        text.append(" · ")
    text.append(tour.current.title, style="bold")
    return text


def end_invite(tour: Tour) -> str:
    """What to do once the chapter's run is over: go on to the next chapter, or run this one again."""
    nxt = tour.next_chapter
    if nxt is not None:
        return f"Press {NEXT_KEY} for the next chapter: {nxt.title}"
    again = f"Press {RESTART_KEY} to run it again."
    return f"That was the last chapter. {again}" if len(tour) > 1 else again


def key_items(tour: Tour, *, ended: str | None = None, story_key: bool = True) -> list[Text]:
    """The items of the key line: run over?, next, back, story, the keys to try (or, once
    the run is over, the key that runs it again).

    Args:
        tour: The tour, at its current chapter.
        ended: The run's end status ("ok", "error", ...) once it ended, else None.
        story_key: Mention the story key (not inside the story dialog itself).
    """
    items: list[Text] = []
    if ended is not None:
        done = ended == "ok"
        items.append(Text("✓ run finished" if done else "■ run over", style="bold green" if done else "bold yellow"))
    nxt = tour.next_chapter
    if nxt is not None:
        item = Text(NEXT_KEY, style=_KEY)
        item.append(" next: ", style="bold" if ended is not None else "")
        item.append(nxt.title)
        items.append(item)
    elif len(tour) > 1:
        items.append(Text.assemble(("end of the tour", "bold"), " · ", ("q", _KEY), " quit"))
    if tour.previous_chapter is not None:
        items.append(Text.assemble((PREVIOUS_KEY, _KEY), " back"))
    if story_key:
        items.append(Text.assemble((STORY_KEY, _KEY), " story"))
    if ended is not None:
        items.append(Text.assemble((RESTART_KEY, _KEY), " run again"))
    elif tour.current.keys:
        tries = Text("try ", style="dim")
        for i, key in enumerate(tour.current.keys):
            if i:
                tries.append(" · ", style="dim")
            tries.append(key, style=_KEY)
            tries.append(f" {SUGGESTIBLE_KEYS[key]}")
        items.append(tries)
    return items


def key_line(tour: Tour, *, ended: str | None = None, story_key: bool = True) -> Chips:
    """The key line as a renderable that wraps between items, never inside one."""
    return Chips([key_items(tour, ended=ended, story_key=story_key)], fold=True)


class ChapterScreen(ModalScreen[None]):
    """The current chapter's story in full; `.`/`,` (app keys) move on and update it in place."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,t", "close", "watch the run", id="story-close"),
        Binding("q", "app.quit", "quit", id="story-quit"),
        # A modal screen hides the app's bindings: route the chapter keys to the app.
        Binding("full_stop", "app.tour_move(1)", "next", key_display=NEXT_KEY, show=False, id="story-next"),
        Binding("comma", "app.tour_move(-1)", "back", key_display=PREVIOUS_KEY, show=False, id="story-back"),
    ]

    def __init__(self, tour: Tour, ended: str | None = None, *, held: bool = False) -> None:
        super().__init__()
        self.tour = tour
        self.ended = ended
        self.held = held
        self._composed = False

    def compose(self) -> ComposeResult:
        with Vertical(id="story-dialog", classes="dialog"):
            yield Static(id="story-head", classes="dialog-title")
            with VerticalScroll(id="story-scroll"):
                yield Static(id="story-text")
            yield Static(id="story-keys")
            yield Static(id="story-close", classes="dialog-hint")

    def on_mount(self) -> None:
        self._composed = True
        self.show(self.tour, self.ended, held=self.held)

    def show(self, tour: Tour, ended: str | None = None, *, held: bool = False) -> None:
        """Show the tour's current chapter (called again when the chapter changes).

        Args:
            tour: The tour, at the chapter to show.
            ended: The run's end status once it ended.
            held: The chapter's training waits for this dialog to close.
        """
        self.tour = tour
        self.ended = ended
        self.held = held
        if not self._composed:
            return
        what = "start this chapter's run" if held else "back to the run"
        close = Text.assemble(("Esc", _KEY), " or ", (STORY_KEY, _KEY), f": {what}  ", ("q", _KEY), ": quit")
        self.query_one("#story-close", Static).update(close)
        self.query_one("#story-head", Static).update(heading(tour))
        self.query_one("#story-text", Static).update(Markdown(tour.current.narrative))
        self.query_one("#story-keys", Static).update(key_line(tour, ended=ended, story_key=False))
        self.query_one("#story-scroll", VerticalScroll).scroll_home(animate=False)

    def action_close(self) -> None:
        self.dismiss(None)
