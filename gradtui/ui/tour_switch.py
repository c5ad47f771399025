"""The tour's half of the viewer (`gradtui demo`): switching chapters.

`GradTUIApp` owns one `TourSwitch` when it shows a tour. The switch starts a chapter (at
once, or when its story is closed), closes the previous chapter's source on a thread,
and writes the chapter's heading and keys into the banner, the side panel and the
story. While the story or the help covers a running chapter, its training waits: a
quiet `SetPaused`, on the record like any pause but kept out of the alert log.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, NamedTuple, Protocol

from textual.app import App
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Static

from gradtui.model.commands import SetPaused
from gradtui.model.events import RunEnd
from gradtui.model.store import RunStore
from gradtui.sources.base import Source
from gradtui.ui.controls import Controls
from gradtui.ui.interventions import Interventions
from gradtui.ui.messages import ChapterStarted
from gradtui.ui.screens.help import HelpScreen
from gradtui.ui.screens.tour import ChapterScreen, end_invite, heading, key_line
from gradtui.ui.tour import HeldSource, Tour
from gradtui.ui.widgets.status import Chips

log = logging.getLogger(__name__)

WIDE_AT = 120
"""Columns from which the side panels sit beside the heatmap (below it on narrower terminals)."""
CLOSE_WAIT_S = 10.0
"""How long leaving waits for the training processes of earlier chapters to stop."""
PAUSING_SCREENS: tuple[type[Screen[Any]], ...] = (ChapterScreen, HelpScreen)
"""Screens that cover the run: in the tour, its training waits while one is open."""


class ChapterViewer(Protocol):
    """What the tour uses of the viewer (`GradTUIApp`): its run, and a clean screen for the next."""

    @property
    def source(self) -> Source: ...

    @property
    def store(self) -> RunStore: ...

    @property
    def controls(self) -> Controls: ...

    @property
    def interventions(self) -> Interventions: ...

    narrative: str | None

    def new_run(self) -> None:
        """Forget the run on screen: its store, logs, notifications and what was said about it."""
        ...

    def use_source(self, source: Source) -> None:
        """Read events from `source` from now on (closing the last one is the caller's)."""
        ...

    def poll_source(self, paced: bool = False) -> int: ...


class ChapterWidgets(NamedTuple):
    """Where a chapter's heading and keys show: a banner above the heatmap (narrow
    terminals), or the side panel's head and foot beside it."""

    banner: Static
    panel: Vertical
    head: Static
    keys: Static


class TourSwitch:
    """The chapters of the tour in the viewer.

    Args:
        app: The app whose screens, toasts and title the tour uses.
        viewer: The same app, for its run.
        tour: The tour.
        widgets: Where the chapter's heading and keys show.
        held: The current chapter waits for its story to be read (its source is a `HeldSource`).
    """

    def __init__(
        self, app: App[Any], viewer: ChapterViewer, tour: Tour, widgets: ChapterWidgets, *, held: bool
    ) -> None:
        self.app = app
        self.viewer = viewer
        self.tour = tour
        self.widgets = widgets
        self.held = held
        """The chapter's training starts when its story is closed."""
        self._modal_paused = False
        """This chapter's training waits because a story or the help covers it."""
        self._mounted = False
        self._retiring: list[threading.Thread] = []

    def mounted(self) -> None:
        """The app is on screen: start the chapter (or show the one running) and follow the screens."""
        self._mounted = True
        self.app.screen_change_signal.subscribe(self.app, self._screen_changed)
        if self.held:
            self.start_chapter()
        else:
            self.show_chapter()

    # ------------------------------------------------------------ the chapter keys

    def move(self, delta: int) -> None:
        """Go `delta` chapters along the tour: stop this chapter's training, start that one's."""
        if not self.tour.move(delta):
            where = "last" if delta > 0 else "first"
            self.app.notify(f"This is the {where} chapter of the tour.", timeout=3)
            return
        self.start_chapter()

    def restart(self) -> None:
        """Run this chapter again from its first step: a fresh training process, a clean screen."""
        self.start_chapter(reread=False)

    def story(self) -> None:
        """Open the chapter's story, or close it."""
        screen = self.app.screen
        if isinstance(screen, ChapterScreen):
            screen.dismiss(None)
            return
        self._open_story()

    # ------------------------------------------------------------ switching

    def start_chapter(self, *, reread: bool = True) -> None:
        """Switch to the tour's current chapter (or start it again).

        The old source is closed on a thread (a worker may take a moment to stop); the
        store, the logs, the notifications and the pending commands start empty. When the
        story shows over the heatmap (below 120 columns, or opened with `t`), the chapter's
        training starts when the story is closed, so that nothing happens unseen; beside
        it, at once. `reread=False` (a restart) skips the story below 120 columns.
        """
        app, tour = self.app, self.tour
        # The old run's screens (layer detail, crash dialog) have nothing to show any more;
        # an open story stays and shows the new chapter.
        story_open = isinstance(app.screen, ChapterScreen)
        keep = 2 if story_open and len(app.screen_stack) == 2 else 1
        while len(app.screen_stack) > keep:
            app.pop_screen()
        self._retire(self.viewer.source)
        self.viewer.new_run()
        self._modal_paused = False  # the pause was the old run's
        self.viewer.narrative = tour.current.narrative
        self.held = story_open or (reread and app.size.width < WIDE_AT)
        if self.held:
            self.viewer.use_source(HeldSource(f"demo: {tour.current.name}"))
            if not isinstance(app.screen, ChapterScreen):
                self._open_story()
            self.show_chapter()
        else:
            self._release()

    def _release(self) -> None:
        """Start the current chapter's training (its story was read or is beside the heatmap)."""
        self.held = False
        self.viewer.use_source(self.tour.start())
        self.show_chapter()
        self.viewer.poll_source()
        self.app.post_message(ChapterStarted(self.tour.index, self.tour.current.name))

    def _open_story(self) -> None:
        self.app.push_screen(ChapterScreen(self.tour, self._ended(), held=self.held), callback=self._story_closed)

    def _story_closed(self, _: None) -> None:
        if self.held:
            self._release()

    def _screen_changed(self, _: Screen[Any]) -> None:
        """Pause a running chapter while a story or the help covers it; resume it once uncovered."""
        covered = isinstance(self.app.screen, PAUSING_SCREENS)
        send = self.viewer.interventions.send
        if covered and not self._modal_paused:
            self._modal_paused = self._can_hold() and send(SetPaused(True), quiet=True) is None
        elif not covered and self._modal_paused:
            self._modal_paused = False
            # Not when the run ended meanwhile, or someone else resumed it.
            if self.viewer.store.end is None and self.viewer.controls.intended().paused:
                send(SetPaused(False), quiet=True)

    def _can_hold(self) -> bool:
        """A chapter's run is going, and not paused already (a pause of the user's stays theirs)."""
        store = self.viewer.store
        live = not isinstance(self.viewer.source, HeldSource) and store.run is not None and store.end is None
        return live and not self.viewer.controls.intended().paused

    def _ended(self) -> str | None:
        end = self.viewer.store.end
        return end.status if end is not None else None

    def run_ended(self, end: RunEnd) -> None:
        """The chapter's run is over: its keys say so, and (unless it crashed) what comes next."""
        self.show_chapter()
        if end.status != "error":
            invite = end_invite(self.tour)
            self.app.notify(f"This chapter's run is over. {invite}", title="Chapter finished", timeout=8)

    def show_chapter(self) -> None:
        """Write the chapter's heading and key line into the banner, the side panel and the story."""
        tour, widgets = self.tour, self.widgets
        chapter = tour.current
        ended = self._ended()
        head = heading(tour)
        keys = key_line(tour, ended=ended)
        self.app.title = f"gradtui demo · {chapter.title}"
        widgets.banner.update(Chips([[head], *keys.lines], fold=True))
        widgets.panel.border_title = f"tour · {chapter.group}" if len(tour) > 1 else "demo"
        widgets.head.update(head)
        widgets.keys.update(keys)
        screen = self.app.screen
        if isinstance(screen, ChapterScreen):
            screen.show(tour, ended, held=self.held)

    # ------------------------------------------------------------ closing old chapters

    def _retire(self, source: Source) -> None:
        """Close a chapter's source on a thread; leaving the app waits for it."""
        if not self._mounted:  # nothing runs concurrently yet
            _close_quietly(source)
            return
        thread = threading.Thread(target=_close_quietly, args=(source,), name="gradtui-close-chapter")
        thread.start()
        self._retiring.append(thread)

    def wait_retired(self, timeout: float = CLOSE_WAIT_S) -> bool:
        """Wait for the sources of earlier chapters to close; True when all did."""
        for thread in self._retiring:
            thread.join(timeout)
        self._retiring = [t for t in self._retiring if t.is_alive()]
        return not self._retiring


def _close_quietly(source: Source) -> None:
    try:
        source.close()
    except Exception:  # the old chapter's process may already be gone
        log.exception("closing a chapter's source failed")
