"""The gradtui viewer: a Textual app over an event `Source`.

The app polls its source on a timer (10 Hz by default), folds every event into a
`RunStore`, and redraws only what changed (`store.version`): no thread, and a burst of
events costs one redraw. Keys turn into commands sent back through the same source;
each stays pending until the probe acknowledges it.

The key tables are in `gradtui.ui.bindings`. The app owns two components: the
intervention keys' actions (`gradtui.ui.interventions`) and, in the demo, the switching
of the tour's chapters (`gradtui.ui.tour_switch`).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterable
from functools import partial
from typing import ClassVar

from rich.markdown import Markdown
from textual import events
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import Static

from gradtui.model.commands import PAUSE_LEASE, SetPaused
from gradtui.model.events import Alert, Capture, CommandResult, Event, GuardAction, LogLine, NonFiniteOrigin, RunEnd
from gradtui.model.store import STAT_LABELS, RunStore
from gradtui.sources.base import Source
from gradtui.ui.bindings import (
    INTERVENE,
    INTERVENTION_BINDINGS,
    REPLAY_ACTIONS,
    REPLAY_BINDINGS,
    TOUR_ACTIONS,
    TOUR_BINDINGS,
    VIEW_BINDINGS,
)
from gradtui.ui.bindings import KEY_ACTIONS as _KEY_ACTIONS
from gradtui.ui.captures import log_text, next_stat
from gradtui.ui.controls import Controls
from gradtui.ui.hangup import stdin_fd, watch_terminal
from gradtui.ui.interventions import Interventions
from gradtui.ui.layout import ScreenRows
from gradtui.ui.messages import RunEnded
from gradtui.ui.pacing import Pacer
from gradtui.ui.palette import palette_bindings, palette_commands, textual_commands
from gradtui.ui.scale import HEATMAP_STATS
from gradtui.ui.screens.detail import LayerDetailScreen
from gradtui.ui.screens.dialogs import ConfirmQuit, RunErrorScreen
from gradtui.ui.screens.help import HelpScreen, help_sections
from gradtui.ui.screens.tour import NEXT_KEY, RESTART_KEY, ChapterScreen
from gradtui.ui.themes import REGISTERED, THEMES
from gradtui.ui.tour import HeldSource, Tour
from gradtui.ui.tour_switch import CLOSE_WAIT_S, WIDE_AT, ChapterWidgets, TourSwitch
from gradtui.ui.widgets.alert_log import AlertLog
from gradtui.ui.widgets.charts import run_charts
from gradtui.ui.widgets.keys_footer import KeysFooter
from gradtui.ui.widgets.layer_heatmap import LayerHeatmap
from gradtui.ui.widgets.status import StatusHeader

log = logging.getLogger(__name__)

GC_THRESHOLDS = (50_000, 20, 100)
"""Garbage-collector thresholds while the viewer runs (see GradTUIApp.on_mount)."""

FOOTER_FIRST = frozenset({"help", "quit"})
"""The binding ids the footer shows first."""

OUTPUT_TAIL = 40
"""Lines of the training process's output shown with its error when it crashes."""


class GradTUIApp(App[None]):
    """Live view of one training run's gradient health, with interventions from the keyboard.

    Args:
        source: Where events come from and commands go.
        title: Terminal/app title (defaults to the source's name).
        narrative: Text for a side panel (the demo's tour); None hides it.
        refresh_hz: Polls (and at most redraws) per second.
        max_events_per_tick: Events folded per poll; the rest wait for the next poll.
        store: A store to fill (a fresh one by default).
        tour: The demo's guided tour; `source` is its current chapter's, or None to let
            the app start it. Adds the chapter keys, and a heading and key line that stay
            visible at any size.
    """

    CSS_PATH = "gradtui.tcss"
    ENABLE_COMMAND_PALETTE = True
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (WIDE_AT, "-wide")]
    # Help and quit lead the footer: cut at the right on a narrow screen, it still says how to leave.
    BINDINGS: ClassVar[list[BindingType]] = [
        *(b for b in VIEW_BINDINGS if b.id in FOOTER_FIRST),
        *TOUR_BINDINGS,
        *INTERVENTION_BINDINGS,
        *REPLAY_BINDINGS,
        *(b for b in VIEW_BINDINGS if b.id not in FOOTER_FIRST),
    ]

    stat: reactive[str] = reactive(HEATMAP_STATS[0])
    """Statistic the heatmap shows (cycled with `s`)."""
    narrative: reactive[str | None] = reactive(None)
    """Markdown shown in the side panel; None hides the panel."""

    def __init__(
        self,
        source: Source | None,
        *,
        title: str | None = None,
        narrative: str | None = None,
        refresh_hz: float = 10.0,
        max_events_per_tick: int = 200_000,
        store: RunStore | None = None,
        tour: Tour | None = None,
    ) -> None:
        super().__init__()
        self.tour = tour
        """The guided tour (`gradtui demo`), or None."""
        held = False
        if tour is not None:
            narrative = tour.current.narrative
            if source is None:
                # Started on mount, once the width says whether the story opens over the heatmap.
                source = HeldSource(f"demo: {tour.current.name}")
                held = True
        if source is None:
            raise ValueError("a source is needed (or a tour whose chapters start their own)")
        self.source = source
        self.store = store if store is not None else RunStore()
        self.controls = Controls(self.store)
        self.interventions = Interventions(self, self)
        """The intervention keys' actions (`intervene(...)`)."""
        self.refresh_hz = refresh_hz
        self.max_events_per_tick = max_events_per_tick
        self.title = title or f"gradtui: {source.name}"
        self.set_reactive(GradTUIApp.narrative, narrative)
        self._shown: tuple[int, int, str] | None = None
        self._pacer = Pacer()
        self._alerts_due: list[Alert] = []
        self._timer: Timer | None = None
        self._source_closed = False
        self._source_error: str | None = None
        self._bad_events = 0
        self._error_shown = False
        self._mounted_ui = False
        self._gc_saved: tuple[int, int, int] | None = None
        # Kept as attributes, not queried: `App.query_one` searches the *active* screen,
        # and the timer keeps these up to date under the detail screen and dialogs too.
        self.status_header = StatusHeader(self.store, self.controls, source.name, id="status")
        self.heatmap = LayerHeatmap(self.store, id="heatmap")
        self.rows = ScreenRows(self.heatmap, tour=tour is not None)
        """Shares the main screen's rows by what they show (`gradtui.ui.layout`)."""
        self.quiet_results: set[str] = set()
        """Ids of the viewer's own quiet commands that were acknowledged (the tour's pauses): off the charts."""
        self.charts = run_charts(self.store, hidden=self.quiet_results)
        self.alert_log = AlertLog(id="alerts", classes="panel")
        self.output_log = AlertLog(id="output", classes="panel", placeholder="no output yet")
        self.replay = source.controls
        """The source's replay controls (play, speed, seek) when it plays a record, else None."""
        self._replay_generation = self.replay.generation if self.replay is not None else 0
        self.narrative_text = Static(id="narrative-text")
        self.narrative_head = Static(id="narrative-head")
        self.narrative_keys = Static(id="narrative-keys")
        self.narrative_scroll = VerticalScroll(self.narrative_text, id="narrative-scroll")
        self.narrative_panel = Vertical(self.narrative_head, self.narrative_scroll, self.narrative_keys, id="narrative")
        self.tour_banner = Static(id="tour-banner")
        """Narrow terminals: the chapter and its keys in two lines above the heatmap."""
        self.tour_switch: TourSwitch | None = None
        """Switches the tour's chapters (None without a tour)."""
        if tour is not None:
            widgets = ChapterWidgets(self.tour_banner, self.narrative_panel, self.narrative_head, self.narrative_keys)
            self.tour_switch = TourSwitch(self, self, tour, widgets, held=held)

    # ------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield self.status_header
        yield self.tour_banner
        with Horizontal(id="body"):
            with Vertical(id="main"):
                yield self.heatmap
                with Horizontal(id="side"):
                    with Vertical(id="charts"):
                        yield from self.charts
                    yield self.alert_log
                    yield self.output_log
            yield self.narrative_panel
        yield KeysFooter(compact=True)

    def on_mount(self) -> None:
        self._mounted_ui = True
        if not self.is_headless:
            watch_terminal(stdin_fd())
        for theme in REGISTERED:
            self.register_theme(theme)
        self.heatmap.color = not self.no_color
        self.heatmap.focus()
        self.alert_log.border_title = "alerts (o: output)"
        self.output_log.border_title = "output (o: alerts)"
        self.output_log.display = False
        self._update_heatmap_titles()
        if self.tour_switch is not None:
            # CSS picks banner or side panel by width (see gradtui.tcss, Screen.-tour).
            self.screen.add_class("-tour")
            self.tour_switch.mounted()
        else:
            self.narrative_head.display = False
            self.narrative_keys.display = False
        self.watch_narrative(self.narrative)
        self.watch(self.heatmap, "flagged_only", self._rows_filtered, init=False)
        self.rows.fit(self.size)
        self.poll_source()
        self._timer = self.set_interval(1.0 / self.refresh_hz, partial(self.poll_source, paced=True))
        # Each frame allocates tens of thousands of short-lived segments and strips; with
        # CPython's default thresholds they reach the oldest generation, whose collections
        # then stall a frame for 50-70 ms (measured at 500 layers). Collect young objects
        # less often, and leave what exists at start-up out of full collections.
        self._gc_saved = gc.get_threshold()
        gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])
        gc.freeze()

    def _rows_filtered(self) -> None:
        self._update_heatmap_titles()
        self.rows.fit(self.size)

    def on_resize(self, event: events.Resize) -> None:
        self.rows.fit(event.size)

    def watch_narrative(self, text: str | None) -> None:
        if not self._mounted_ui:
            return
        if self.tour is None:
            self.narrative_panel.display = bool(text)
            self.narrative_panel.border_title = "tour"
        self.narrative_text.update(Markdown(text or ""))
        self.narrative_scroll.scroll_home(animate=False)

    def watch_stat(self, stat: str) -> None:
        if not self._mounted_ui:
            return
        self.heatmap.stat = stat
        self._update_heatmap_titles()
        self.refresh_views(force=True)

    def _update_heatmap_titles(self) -> None:
        heatmap = self.heatmap
        label = STAT_LABELS.get(self.stat, self.stat)
        n = self.store.n_layers
        shown = int(heatmap.rows.size)
        flagged = "flagged only, " if heatmap.flagged_only else ""
        title = f"layers × steps: {label}"
        subtitle = f"{flagged}{shown}/{n} layers · enter: detail · n/N: next flag · f: filter"
        # Setting a border title repaints the widget even when it is unchanged.
        if heatmap.border_title != title:
            heatmap.border_title = title
        if heatmap.border_subtitle != subtitle:
            heatmap.border_subtitle = subtitle

    # ------------------------------------------------------------ events in

    def poll_source(self, paced: bool = False) -> int:
        """Fold what the source has into the store and redraw what changed (`paced`: as a timer
        tick, see `gradtui.ui.pacing`); returns the event count."""
        if self._source_closed or not self._mounted_ui:
            return 0
        try:
            events = self.source.poll(self.max_events_per_tick)
        except Exception as exc:  # a broken source must not take the viewer down with it
            if self._source_error is None:
                self._source_error = f"{type(exc).__name__}: {exc}"
                log.exception("event source failed")
                self.notify(f"The event source failed: {self._source_error}", severity="error", timeout=10)
                self.alert_log.add_note(f"■ source failed: {self._source_error}", "bold bad")
            return 0
        if self.replay is not None and self.replay.generation != self._replay_generation:
            # A seek: what follows starts from the run's beginning again.
            self._replay_generation = self.replay.generation
            self.reset_store()
        if events:
            self.ingest(events)
        self.refresh_views(paced=paced)
        return len(events)

    def reset_store(self) -> None:
        """Empty the store in place (the widgets keep their reference to it) and the logs (a seek refills them)."""
        self.store.reset()
        self.controls.pending.clear()
        self.status_header.last_result = None  # an acknowledgement from the future of a seek
        self.controls.applied.clear()
        self.alert_log.clear()
        self.output_log.clear()
        self.heatmap.scroll_to(y=0, animate=False)

    def new_run(self) -> None:
        """Forget the run on screen, for another (the tour's next chapter): its store, logs,
        errors, notifications and what was said about it."""
        self.reset_store()
        self.heatmap.reset()
        self.stat = self.stat if self.stat in HEATMAP_STATS else HEATMAP_STATS[0]  # a capture's view: may have none
        self._error_shown = False
        self._source_error = None
        self._bad_events = 0
        self._shown = None
        # "Chapter finished ... Press .", "Nothing sent: the run finished.": the old run's words.
        self.clear_notifications()
        self.interventions.forget()

    def use_source(self, source: Source) -> None:
        """Read events from `source` from now on (closing the last one is the caller's)."""
        self.source = source
        self.status_header.source_name = source.name
        self.refresh_views(force=True)

    def ingest(self, events: list[Event]) -> None:
        """Apply events to the store, and log alerts, acknowledgements and the run's end."""
        alert_log = self.alert_log
        output: list[LogLine] = []
        for ev in events:
            try:
                self.store.apply(ev)
            except Exception:  # one malformed event is reported, not fatal
                self._bad_events += 1
                log.exception("could not apply %s", type(ev).__name__)
                if self._bad_events == 1:
                    alert_log.add_note(f"■ ignored a malformed {type(ev).__name__} event", "bold bad")
                continue
            if isinstance(ev, Alert):
                # Logged with the charts (`refresh_views`): a paced tick may leave them to the next.
                self._alerts_due.append(ev)
            elif isinstance(ev, LogLine):
                output.append(ev)
            elif isinstance(ev, CommandResult):
                self._flush_alerts()  # the log keeps the order of events
                if self.interventions.acknowledged(ev):
                    self.status_header.last_result = ev
                else:
                    self.quiet_results.add(ev.command_id)
            elif isinstance(ev, GuardAction):
                self._flush_alerts()
                alert_log.add_guard(ev)
            elif isinstance(ev, (Capture, NonFiniteOrigin)):
                self._flush_alerts()
                alert_log.write(log_text(ev))
            elif isinstance(ev, RunEnd):
                self._flush_alerts()
                self._on_end(ev, alert_log)
        if output:
            self.output_log.add_output(output)

    def _flush_alerts(self) -> None:
        if self._alerts_due:
            self.alert_log.add_alerts(self._alerts_due)
            self._alerts_due = []

    def _on_end(self, end: RunEnd, alert_log: AlertLog) -> None:
        self.interventions.abandoned()
        alert_log.add_end(end)
        self.post_message(RunEnded(end))
        if self.tour_switch is not None:
            self.tour_switch.run_ended(end)
        if end.status == "error" and not self._error_shown:
            self._error_shown = True
            step = end.step if end.step >= 0 else (self.store.last_step if self.store.last_step >= 0 else None)
            tail = [line.text for line in self.store.logs[-OUTPUT_TAIL:]]
            hint = None
            if self.tour is not None and self.tour.next_chapter is not None:
                hint = f"Esc: close  {RESTART_KEY}: run it again  {NEXT_KEY}: next chapter  q: quit"
            self.push_screen(RunErrorScreen(step, end.error, tail, hint=hint))

    def refresh_views(self, force: bool = False, paced: bool = False) -> None:
        """Redraw the widgets whose inputs changed since the last call (a timer tick, `paced`,
        may leave the heatmap or the charts to the next: see `gradtui.ui.pacing`)."""
        key = (self.store.version, self.controls.version, self.stat)
        changed = force or key != self._shown
        if not changed and not self._pacer.stale:
            return
        self._shown = key
        todo = self._pacer.due(changed, paced and not force)
        if "heatmap" in todo:
            with self._pacer.timing("heatmap"):
                self.heatmap.refresh_data()
                self._update_heatmap_titles()
                self.rows.fit(self.size)
        if self.replay is not None:
            self.status_header.replay_status = self.replay.status
        self.status_header.refresh_data(self.stat)
        if "panels" in todo:
            with self._pacer.timing("panels"):
                self._flush_alerts()
                for chart in self.charts:
                    chart.refresh_data()
        screen = self.screen
        if isinstance(screen, LayerDetailScreen):
            screen.refresh_data()

    # ------------------------------------------------------------ keys

    def action_intervene(self, name: str, *args: float) -> None:
        """An intervention key (`gradtui.ui.interventions`): `intervene('scale_lr', 2.0)`."""
        self.interventions.run(name, *args)

    def action_tour_move(self, delta: int) -> None:
        if self.tour_switch is not None:
            self.tour_switch.move(delta)

    def action_tour_restart(self) -> None:
        if self.tour_switch is not None:
            self.tour_switch.restart()

    def action_tour_story(self) -> None:
        if self.tour_switch is not None:
            self.tour_switch.story()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return self._allowed(action, self.screen)

    def _allowed(self, action: str, screen: Screen[object]) -> bool:
        """Whether `action` works on `screen` in this mode (live, replay, tour)."""
        # Interventions only from the main and detail screens, never under a dialog.
        if action == INTERVENE and isinstance(screen, ModalScreen):
            return False
        # A replay has no probe to command: its keys drive the playback instead.
        if action == INTERVENE and self.replay is not None:
            return False
        if action in REPLAY_ACTIONS and self.replay is None:
            return False
        if action in TOUR_ACTIONS:
            if self.tour is None or (action == "tour_move" and len(self.tour) < 2):
                return False
            # A run's own screens give way to the next chapter; other dialogs ask first.
            return not isinstance(screen, ModalScreen) or isinstance(screen, (ChapterScreen, RunErrorScreen))
        return True

    def action_toggle_output(self) -> None:
        show_output = not self.output_log.display
        self.output_log.display = show_output
        self.alert_log.display = not show_output

    def action_replay_play(self) -> None:
        if self.replay is not None:
            self.replay.toggle_play()
            self.refresh_views(force=True)

    def action_replay_speed(self, factor: float) -> None:
        if self.replay is not None:
            self.replay.set_speed(self.replay.speed * factor)
            self.refresh_views(force=True)

    def action_replay_step(self, steps: int) -> None:
        if self.replay is not None:
            self.replay.step_by(steps)

    def action_cycle_stat(self) -> None:
        self.stat = next_stat(self.store, self.stat)  # a capture's views too, once one measured them

    def action_help(self) -> None:
        """The help screen, with the keys that work here."""
        self.push_screen(HelpScreen(help_sections(tour=self.tour is not None, replay=self.replay is not None)))

    def on_key(self, event: events.Key) -> None:
        """A key that does nothing in this mode says why, in one line, instead of nothing."""
        why = self._why_not(event.key)
        if why is not None:
            event.stop()
            self.notify(why, timeout=4)

    def _why_not(self, key: str) -> str | None:
        if isinstance(self.screen, ModalScreen):
            return None
        if self.replay is not None:
            action = _KEY_ACTIONS["live"].get(key)
            if action is not None and key not in _KEY_ACTIONS["replay"]:
                return f"{key}: {action} works on a live run; this is a replay of a record (p plays, < > seek)"
        return None

    # ------------------------------------------------------------ palette and themes

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """The command palette (ctrl+p): every action that works here, then Textual's own."""
        heatmap = [b for b in LayerHeatmap.BINDINGS if isinstance(b, Binding)]
        allowed = partial(self._allowed, screen=screen)
        yield from palette_commands(palette_bindings(heatmap), allowed, self.run_action, self._use_theme)
        yield from textual_commands(super().get_system_commands(screen))

    async def action_on_heatmap(self, action: str) -> None:
        """A heatmap action from the palette (where the heatmap does not have the focus)."""
        self.heatmap.focus()
        await self.heatmap.run_action(action)

    def action_cycle_theme(self) -> None:
        names = list(THEMES)
        nxt = names[(names.index(self.theme) + 1) % len(names)] if self.theme in names else names[0]
        self._use_theme(nxt)

    def _use_theme(self, name: str) -> None:
        self.theme = name
        self.notify(f"Theme: {THEMES[name]}", timeout=2)

    def on_layer_heatmap_layer_selected(self, message: LayerHeatmap.LayerSelected) -> None:
        self.push_screen(LayerDetailScreen(self.store, message.layer))

    # ------------------------------------------------------------ leaving

    async def action_quit(self) -> None:
        """Quit; ask first when that stops a training process this viewer started."""
        if isinstance(self.screen, ConfirmQuit):
            self._leave()  # asked twice (ctrl+q under the dialog): go
            return
        if self.source.owns_process and self.store.end is None:
            can_detach = self.source.can_detach
            # Only where there is no other way out does quitting stop it.
            message = (
                "This viewer started the training process.\nQuit and stop it, or quit and leave it running?"
                if can_detach
                else "Quitting stops the training process this viewer started."
            )
            self.push_screen(ConfirmQuit(message, can_detach=can_detach), callback=self._on_quit_answer)
            return
        if self.controls.holds_pause():
            message = f"You paused this run.\nLeft paused, it resumes {PAUSE_LEASE:g} s after you go."
            self.push_screen(ConfirmQuit(message, paused=True), callback=self._on_quit_answer)
            return
        self._leave()

    def _on_quit_answer(self, answer: str | None) -> None:
        if answer == "stop":
            self._leave()
        elif answer == "detach":
            self._leave(detach=True)
        elif answer == "resume":
            self.interventions.send(SetPaused(False))
            self._leave()  # closing the source sends what is queued first

    def _leave(self, detach: bool = False) -> None:
        if detach:
            try:
                self.source.detach()
            except Exception:  # leaving must not fail; the CLI reports what happened
                log.exception("detaching from the training process failed")
        self.close_source()
        self.exit()

    def close_source(self) -> None:
        """Close the source once (which stops a child training process it started)."""
        if self._source_closed:
            return
        self._source_closed = True
        if self._timer is not None:
            self._timer.stop()
        try:
            self.source.close()
        except Exception:  # leaving must not fail because the child was already gone
            log.exception("closing the event source failed")

    def wait_retired(self, timeout: float = CLOSE_WAIT_S) -> bool:
        """Wait for the sources of the tour's earlier chapters to close; True when all did."""
        return self.tour_switch is None or self.tour_switch.wait_retired(timeout)

    def on_unmount(self) -> None:
        self.close_source()
        if not self.wait_retired():
            log.warning("a training process of an earlier chapter did not stop in time")
        if self._gc_saved is not None:
            gc.set_threshold(*self._gc_saved)
            gc.unfreeze()
            self._gc_saved = None


def make_app(
    source: Source | None,
    *,
    title: str | None = None,
    narrative: str | None = None,
    refresh_hz: float = 10.0,
    store: RunStore | None = None,
    tour: Tour | None = None,
) -> GradTUIApp:
    """Build the viewer for a source; the CLI and the tests both start here.

    Args:
        source: Where events come from and commands go; None with a tour: the app starts
            the tour's current chapter itself.
        title: App title (defaults to "gradtui: <source name>").
        narrative: Markdown for a side panel (the demo tour); None: no panel.
        refresh_hz: Polls (and at most redraws) per second.
        store: A store to fill; a fresh one by default.
        tour: The guided tour (see `gradtui.demo`); `source` runs its current chapter, or is None.
    """
    return GradTUIApp(source, title=title, narrative=narrative, refresh_hz=refresh_hz, store=store, tour=tour)
