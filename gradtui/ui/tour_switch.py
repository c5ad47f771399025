"""The tour's half of the viewer (`gradtui demo`): switching chapters.

`TourSwitching` is a base class of `GradTUIApp`; it keeps the chapter keys' actions,
starts a chapter (at once, or when its story is closed), closes the previous chapter's
source on a thread, and writes the chapter's heading and keys into the banner, the side
panel and the story. While the story or the help covers a running chapter, its training
waits (a `SetPaused`, on the record like any pause). The widgets and the store it works
on are the app's.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from textual import on
from textual.app import App
from textual.containers import Vertical
from textual.events import Mount
from textual.reactive import reactive
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Static

from gradtui.model.commands import Command, SetPaused
from gradtui.model.store import RunStore
from gradtui.sources.base import Source
from gradtui.ui.controls import Controls
from gradtui.ui.messages import ChapterStarted
from gradtui.ui.screens.help import HelpScreen
from gradtui.ui.screens.tour import ChapterScreen, heading, key_line
from gradtui.ui.tour import HeldSource, Tour
from gradtui.ui.widgets.alert_log import AlertLog
from gradtui.ui.widgets.layer_heatmap import LayerHeatmap
from gradtui.ui.widgets.status import Chips, StatusHeader

log = logging.getLogger("gradtui.ui.app")  # the app's logger, as before the split

WIDE_AT = 120
"""Columns from which the side panels sit beside the heatmap (below it on narrower terminals)."""
CLOSE_WAIT_S = 10.0
"""How long leaving waits for the training processes of earlier chapters to stop."""
PAUSING_SCREENS: tuple[type[Screen[Any]], ...] = (ChapterScreen, HelpScreen)
"""Screens that cover the run: in the tour, its training waits while one is open."""


class TourSwitching(App[None]):
    """Chapter switching for `GradTUIApp`, which provides the attributes declared here."""

    tour: Tour | None
    source: Source
    store: RunStore
    controls: Controls
    narrative: reactive[str | None]
    status_header: StatusHeader
    heatmap: LayerHeatmap
    alert_log: AlertLog
    output_log: AlertLog
    narrative_panel: Vertical
    narrative_head: Static
    narrative_keys: Static
    tour_banner: Static
    _held: bool
    _error_shown: bool
    _source_error: str | None
    _bad_events: int
    _shown: tuple[int, int, str] | None
    _timer: Timer | None
    _retiring: list[threading.Thread]
    _modal_paused: bool = False
    """The tour paused this chapter's training because a story or the help covers it."""

    def poll_source(self) -> int:
        raise NotImplementedError  # GradTUIApp's

    def send_command(self, cmd: Command) -> str | None:
        raise NotImplementedError  # GradTUIApp's

    def reset_store(self) -> None:
        raise NotImplementedError  # GradTUIApp's

    def refresh_views(self, force: bool = False) -> None:
        raise NotImplementedError  # GradTUIApp's

    def action_tour_move(self, delta: int) -> None:
        """Go `delta` chapters along the tour: stop this chapter's training, start that one's."""
        if self.tour is None:
            return
        if not self.tour.move(delta):
            where = "last" if delta > 0 else "first"
            self.notify(f"This is the {where} chapter of the tour.", timeout=3)
            return
        self.start_chapter()

    def action_tour_restart(self) -> None:
        """Run this chapter again from its first step: a fresh training process, a clean screen."""
        if self.tour is not None:
            self.start_chapter(reread=False)

    def action_tour_story(self) -> None:
        if self.tour is None:
            return
        if isinstance(self.screen, ChapterScreen):
            self.screen.dismiss(None)
            return
        self._open_story()

    def start_chapter(self, *, reread: bool = True) -> None:
        """Switch to the tour's current chapter (or start it again).

        The old source is closed on a thread (a worker may take a moment to stop); the
        store, the logs, the notifications and the pending commands start empty. When the
        story shows over the heatmap (below 120 columns, or opened with `t`), the chapter's
        training starts when the story is closed, so that nothing happens unseen; beside
        it, at once. `reread=False` (a restart) skips the story below 120 columns.
        """
        tour = self.tour
        if tour is None:
            return
        # The old run's screens (layer detail, crash dialog) have nothing to show any more;
        # an open story stays and shows the new chapter.
        story_open = isinstance(self.screen, ChapterScreen)
        keep = 2 if story_open and len(self.screen_stack) == 2 else 1
        while len(self.screen_stack) > keep:
            self.pop_screen()
        self._retire(self.source)
        self.reset_store()
        self.heatmap.reset()
        self.alert_log.clear()
        self.output_log.clear()
        self.status_header.last_result = None
        self._error_shown = False
        self._source_error = None
        self._bad_events = 0
        self._shown = None
        self._modal_paused = False  # the pause was the old run's
        # "Chapter finished ... Press .", "... not sent: the run has ended": the old run's words.
        self.clear_notifications()
        self.narrative = tour.current.narrative
        self._held = story_open or (reread and self._narrow())
        if self._held:
            self._set_source(HeldSource(f"demo: {tour.current.name}"))
            if not isinstance(self.screen, ChapterScreen):
                self._open_story()
            self._show_chapter()
        else:
            self._release()

    def _release(self) -> None:
        """Start the current chapter's training (its story was read or is beside the heatmap)."""
        tour = self.tour
        if tour is None:
            return
        self._held = False
        self._set_source(tour.start())
        self._show_chapter()
        self.poll_source()
        self.post_message(ChapterStarted(tour.index, tour.current.name))

    def _set_source(self, source: Source) -> None:
        self.source = source
        self.status_header.source_name = source.name
        self.refresh_views(force=True)

    def _open_story(self) -> None:
        if self.tour is not None:
            self.push_screen(ChapterScreen(self.tour, self._ended(), held=self._held), callback=self._story_closed)

    def _story_closed(self, _: None) -> None:
        if self._held:
            self._release()

    @on(Mount)
    def _follow_screens(self) -> None:
        if self.tour is not None:
            self.screen_change_signal.subscribe(self, self._screen_changed)

    def _screen_changed(self, _: Screen[Any]) -> None:
        """Pause a running chapter while a story or the help covers it; resume it once uncovered."""
        covered = isinstance(self.screen, PAUSING_SCREENS)
        if covered and not self._modal_paused:
            self._modal_paused = self._can_hold() and self.send_command(SetPaused(True)) is None
        elif not covered and self._modal_paused:
            self._modal_paused = False
            # Not when the run ended meanwhile, or someone else resumed it.
            if self.store.end is None and self.controls.intended().paused:
                self.send_command(SetPaused(False))

    def _can_hold(self) -> bool:
        """A chapter's run is going, and not paused already (a pause of the user's stays theirs)."""
        live = not isinstance(self.source, HeldSource) and self.store.run is not None and self.store.end is None
        return live and not self.controls.intended().paused

    def _narrow(self) -> bool:
        return self.size.width < WIDE_AT

    def _ended(self) -> str | None:
        return self.store.end.status if self.store.end is not None else None

    def _show_chapter(self) -> None:
        """Write the chapter's heading and key line into the banner, the side panel and the story."""
        tour = self.tour
        if tour is None:
            return
        chapter = tour.current
        ended = self._ended()
        head = heading(tour)
        keys = key_line(tour, ended=ended)
        self.title = f"gradtui demo · {chapter.title}"
        self.tour_banner.update(Chips([[head], *keys.lines], fold=True))
        self.narrative_panel.border_title = f"tour · {chapter.group}" if len(tour) > 1 else "demo"
        self.narrative_head.update(head)
        self.narrative_keys.update(keys)
        if isinstance(self.screen, ChapterScreen):
            self.screen.show(tour, ended, held=self._held)

    def _retire(self, source: Source) -> None:
        """Close a chapter's source on a thread; leaving the app waits for it."""
        if self._timer is None:  # never mounted: nothing runs concurrently
            self._close_quietly(source)
            return

        thread = threading.Thread(target=self._close_quietly, args=(source,), name="gradtui-close-chapter")
        thread.start()
        self._retiring.append(thread)

    @staticmethod
    def _close_quietly(source: Source) -> None:
        try:
            source.close()
        except Exception:  # the old chapter's process may already be gone
            log.exception("closing a chapter's source failed")

    def wait_retired(self, timeout: float = CLOSE_WAIT_S) -> bool:
        """Wait for the sources of earlier chapters to close; True when all did."""
        for thread in self._retiring:
            thread.join(timeout)
        self._retiring = [t for t in self._retiring if t.is_alive()]
        return not self._retiring
