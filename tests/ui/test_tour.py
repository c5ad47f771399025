"""The demo's guided tour in the viewer: every chapter and back, with scripted sources, and
one chapter switch with the real training worker."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from textual.pilot import Pilot
from textual.widgets._footer import FooterKey
from ui_helpers import text_of

from gradtui.demo.catalog import TOUR
from gradtui.demo.launcher import build_tour, chapter_of, make_starter
from gradtui.sources.child import ChildSource
from gradtui.sources.synthetic import ScriptedSource, SyntheticRun
from gradtui.ui.app import GradTUIApp, make_app
from gradtui.ui.messages import ChapterStarted
from gradtui.ui.screens.detail import LayerDetailScreen
from gradtui.ui.screens.dialogs import ConfirmQuit, RunErrorScreen
from gradtui.ui.screens.tour import ChapterScreen
from gradtui.ui.tour import Chapter, FailedSource, HeldSource, Tour, suggested_keys

MANUAL = 0.001
"""A refresh rate that never fires in a test: the app polls when the test says so."""


class Starter:
    """A tour's `start`: a scripted run per visit, with a different number of steps each time
    (so a store that was not emptied shows), pretending to own a process like the worker."""

    def __init__(self, *, fail: set[str] | None = None) -> None:
        self.started: list[ScriptedSource] = []
        self.fail = fail or set()

    def __call__(self, chapter: Chapter) -> ScriptedSource:
        steps = 5 + len(self.started)
        run = SyntheticRun("vanishing", 3 + len(self.started) % 4, run=f"demo: {chapter.name}")
        events = run.events(steps)
        if chapter.name in self.fail:
            from gradtui.model.events import LogLine, RunEnd

            events += [
                LogLine("gradtui worker: CUDA was asked for but torch sees no CUDA device here", "stderr"),
                RunEnd(step=-1, status="error", error="training process exited with code 2 (eof)"),
            ]
        source = ScriptedSource(events, name=f"demo: {chapter.name}", owns_process=True)
        self.started.append(source)
        return source

    def steps_of(self, source: ScriptedSource) -> int:
        return 5 + self.started.index(source)


def tour_app(starter: Starter, names: tuple[str, ...] = TOUR, refresh_hz: float = MANUAL) -> GradTUIApp:
    tour = Tour([chapter_of(n) for n in names], starter)
    return make_app(None, tour=tour, refresh_hz=refresh_hz)


Body = Callable[[GradTUIApp, Pilot[None]], Awaitable[None]]


def drive(app: GradTUIApp, body: Body, size: tuple[int, int], messages: list[object] | None = None) -> None:
    async def main() -> None:
        hook = messages.append if messages is not None else None
        async with app.run_test(size=size, message_hook=hook) as pilot:
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())


def check_story(app: GradTUIApp, index: int, *, held: bool) -> None:
    """The story dialog shows chapter `index`: its heading, narrative and keys."""
    info = chapter_of(TOUR[index])
    position = f"Chapter {index + 1}/{len(TOUR)}"
    assert isinstance(app.screen, ChapterScreen)
    assert f"{position} · {info.title}" in text_of(app.screen.query_one("#story-head"))
    story = text_of(app.screen.query_one("#story-text"), width=78)
    assert " ".join(info.narrative.split()[:3]) in story
    nxt = app.tour.next_chapter if app.tour is not None else None
    keys = text_of(app.screen.query_one("#story-keys"), width=78)
    assert (f". next: {nxt.title}" in keys) if nxt is not None else ("end of the tour" in keys)
    close = text_of(app.screen.query_one("#story-close"))
    assert close.startswith("Esc or t: " + ("start this chapter's run" if held else "back to the run"))
    if held:  # nothing trains unseen while the story covers the heatmap
        assert isinstance(app.source, HeldSource) and app.source.name == f"demo: {info.name}"


async def read_story_then_start(app: GradTUIApp, pilot: Pilot[None], index: int) -> None:
    check_story(app, index, held=True)
    await pilot.press("escape")
    assert not isinstance(app.screen, ChapterScreen)


def check_chapter(app: GradTUIApp, starter: Starter, index: int, *, narrow: bool) -> None:
    """The app shows chapter `index` and runs a fresh source for it; the previous one is closed."""
    assert app.tour is not None
    name = TOUR[index]
    info = chapter_of(name)
    position = f"Chapter {index + 1}/{len(TOUR)}"
    # A new source was started for this chapter and is the one the app reads.
    assert app.source is starter.started[-1] and app.source.name == f"demo: {name}"
    assert app.wait_retired(5.0)
    assert all(s.closed for s in starter.started[:-1]) and not app.source.closed
    # The store holds this run only: its name, and exactly its own steps.
    assert app.store.run is not None and app.store.run.run == f"demo: {name}"
    assert app.store.total_steps == starter.steps_of(starter.started[-1])
    assert not app.controls.pending, "pending commands belong to the old run"
    assert "clip" not in " ".join(app.alert_log.plain_lines), "the old run's log was cleared"
    keys = text_of(app.narrative_keys if not narrow else app.tour_banner, width=200)
    nxt = app.tour.next_chapter
    assert (f". next: {nxt.title}" in keys) if nxt is not None else ("end of the tour" in keys)
    if narrow:
        assert app.tour_banner.display and not app.narrative_panel.display
        banner = text_of(app.tour_banner, width=80).splitlines()
        assert banner[0] == f"{position} · {info.title}"[:80]
    else:
        assert f"{position} · {info.title}" in text_of(app.narrative_head, width=200)
        assert app.narrative == info.narrative
        assert app.narrative_panel.border_title == f"tour · {info.group}"


def test_the_tour_walks_every_chapter_and_back_at_80x24() -> None:
    starter = Starter()
    app = tour_app(starter)
    messages: list[object] = []

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        # Below 120 columns each chapter opens on its story; its run starts when it is closed.
        assert starter.started == []
        await read_story_then_start(app, pilot, 0)
        check_chapter(app, starter, 0, narrow=True)
        await pilot.press("c")  # a command left pending when the chapter changes
        assert app.controls.pending
        for index in range(1, len(TOUR)):
            await pilot.press("full_stop")
            await read_story_then_start(app, pilot, index)
            check_chapter(app, starter, index, narrow=True)
        await pilot.press("full_stop")  # past the end: nothing moves, nothing restarts
        assert app.tour is not None and app.tour.index == len(TOUR) - 1
        assert len(starter.started) == len(TOUR) and not isinstance(app.screen, ChapterScreen)
        for index in range(len(TOUR) - 2, -1, -1):
            await pilot.press("comma")
            await read_story_then_start(app, pilot, index)
            check_chapter(app, starter, index, narrow=True)
        await pilot.press("comma")
        assert app.tour.index == 0 and len(starter.started) == 2 * len(TOUR) - 1
        # Leafing through stories starts nothing: only the chapter whose story is closed runs.
        await pilot.press("t", "full_stop", "full_stop", "full_stop")
        check_story(app, 3, held=True)
        assert app.wait_retired(5.0) and all(s.closed for s in starter.started)
        await pilot.press("comma", "escape")
        check_chapter(app, starter, 2, narrow=True)
        assert len(starter.started) == 2 * len(TOUR)

    drive(app, body, (80, 24), messages)
    started = [m.index for m in messages if isinstance(m, ChapterStarted)]
    assert started == [*range(len(TOUR)), *range(len(TOUR) - 2, -1, -1), 2]
    assert all(s.closed for s in starter.started), "quitting closed the last chapter's source"


def test_the_tour_side_panel_at_160x48() -> None:
    starter = Starter()
    app = tour_app(starter)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        check_chapter(app, starter, 0, narrow=False)
        assert not isinstance(app.screen, ChapterScreen), "wide: the story is beside the heatmap"
        assert app.narrative_panel.display and not app.tour_banner.display
        footer = {k.key for k in app.screen.query(FooterKey)}
        assert "full_stop" in footer
        for index in (1, 2, 3):
            await pilot.press("full_stop")
            check_chapter(app, starter, index, narrow=False)
        assert app.tour is not None and app.tour.current.name == "relu-explode"
        keys = text_of(app.narrative_keys, width=36)
        assert "try c clip · - lr÷2" in keys and ", back" in keys and "t story" in keys
        await pilot.press("t")  # the story over a running chapter: closing it goes back to the run
        check_story(app, 3, held=False)
        await pilot.press("t")
        assert not isinstance(app.screen, ChapterScreen) and app.source is starter.started[-1]
        await pilot.press("question_mark")
        help_text = text_of(app.screen.query_one("#help-body"), width=88)
        assert "Tour (gradtui demo)" in help_text and "next chapter" in help_text
        await pilot.press("escape")

    drive(app, body, (160, 48))


def test_a_chapter_that_ends_invites_the_next_and_one_that_crashes_shows_why() -> None:
    starter = Starter(fail={"sigmoid-relu-he"})
    app = tour_app(starter, names=("sigmoid", "sigmoid-relu-he", "sigmoid-glorot"))
    notes: list[str] = []

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        from gradtui.model.events import RunEnd

        app.notify = lambda message, **kw: notes.append(str(message))  # type: ignore[method-assign]
        starter.started[-1].feed([RunEnd(step=4, status="ok")])
        app.poll_source()
        await pilot.pause()
        keys = text_of(app.narrative_keys, width=120)
        assert "✓ run finished" in keys and ". next: Cure: ReLU with He init" in keys
        assert notes == ["This chapter's run is over. Press . for the next chapter: Cure: ReLU with He init"]
        await pilot.press("q")  # the run is over: nothing to stop, no question
        assert not isinstance(app.screen, ConfirmQuit)

    drive(app, body, (160, 48))

    starter = Starter(fail={"sigmoid-relu-he"})
    app = tour_app(starter, names=("sigmoid", "sigmoid-relu-he", "sigmoid-glorot"))

    async def crash(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("enter")  # a layer's detail screen: the next chapter closes it
        assert isinstance(app.screen, LayerDetailScreen)
        await pilot.press("full_stop")
        await pilot.pause()
        assert isinstance(app.screen, RunErrorScreen)
        assert "CUDA was asked for" in text_of(app.screen.query_one(".dialog-hint"))
        assert ".: next chapter" in str(app.screen.hint) and "r: run it again" in str(app.screen.hint)
        started = len(starter.started)
        await pilot.press("r")  # run the crashed chapter again: a fresh process, the dialog gone
        await pilot.pause()
        assert len(starter.started) == started + 1 and starter.started[-2].closed
        assert app.tour is not None and app.tour.current.name == "sigmoid-relu-he"
        assert isinstance(app.screen, RunErrorScreen)  # it crashes again (the fake fails at once)
        await pilot.press("full_stop")  # the crash dialog lets the tour go on
        assert app.tour is not None and app.tour.current.name == "sigmoid-glorot"
        assert not isinstance(app.screen, RunErrorScreen)
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuit)  # this chapter's "process" still runs
        await pilot.press("y")

    drive(app, crash, (160, 48))
    assert all(s.closed for s in starter.started)


def test_a_one_chapter_tour_has_no_chapter_keys() -> None:
    starter = Starter()
    app = tour_app(starter, names=("relu-explode",))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        from gradtui.model.events import RunEnd

        footer = {k.key for k in app.screen.query(FooterKey)}
        assert "full_stop" not in footer
        await pilot.press("full_stop")
        assert len(starter.started) == 1
        starter.started[-1].feed([RunEnd(step=5, status="ok")])
        app.poll_source()
        await pilot.pause()
        assert _notes(app) == ["This chapter's run is over. Press r to run it again."]
        assert "r run again" in text_of(app.narrative_keys, width=100)
        await pilot.press("r")
        assert len(starter.started) == 2 and _notes(app) == []
        assert app.narrative_panel.border_title == "demo"
        head = text_of(app.narrative_head, width=100)
        assert head.strip() == "Exploding: plain SGD on raw regression targets"
        assert "try c clip · - lr÷2" in text_of(app.narrative_keys, width=100)

    drive(app, body, (160, 48))


def test_a_chapter_that_cannot_start_is_shown_as_a_crash() -> None:
    def start(chapter: Chapter) -> ScriptedSource:
        raise OSError("no such file: python")

    tour = Tour([chapter_of("sigmoid")], start)
    source = tour.start()
    assert isinstance(source, FailedSource)
    app = make_app(source, tour=tour, refresh_hz=MANUAL)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert isinstance(app.screen, RunErrorScreen)
        assert "could not start sigmoid: no such file: python" in str(app.screen.error)

    drive(app, body, (160, 48))


def test_suggested_keys_come_from_the_narratives() -> None:
    assert suggested_keys("Press c to clip the gradient norm, or - to halve the learning rate.") == ("c", "-")
    assert suggested_keys("the cure is a smaller learning rate (press -) or warm-up") == ("-",)
    assert suggested_keys("Press enter to see more; press q to quit.") == ()
    assert chapter_of("relu-explode-clip").keys == ("s", "c")
    assert chapter_of("sigmoid").keys == ("s",)
    assert chapter_of("opt-sgd").keys == ()


@pytest.mark.slow
def test_a_real_worker_streams_and_is_stopped_by_the_chapter_switch() -> None:
    args = argparse.Namespace(steps=30, seed=0, device="cpu", speed=0.0, record=None)
    tour = build_tour(["sigmoid", "sigmoid-relu-he"], make_starter(args, tour=True))
    app = make_app(None, tour=tour, refresh_hz=20)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        first = app.source
        assert isinstance(first, ChildSource)
        deadline = time.monotonic() + 60
        while app.store.last is None and time.monotonic() < deadline:
            await pilot.pause(0.1)
        assert app.store.last is not None, "no step arrived from the worker"
        assert app.store.run is not None and app.store.run.run == "demo: sigmoid"
        await pilot.press("full_stop")
        second = app.source
        assert isinstance(second, ChildSource) and second is not first
        assert app.wait_retired(15.0)
        assert first.process.poll() is not None, "the old chapter's worker still runs"
        assert app.store.run is None or app.store.run.run == "demo: sigmoid-relu-he"
        await pilot.press("q")
        if isinstance(app.screen, ConfirmQuit):
            await pilot.press("y")

    drive(app, body, (160, 48))
    second = app.source
    assert isinstance(second, ChildSource)
    assert second.process.poll() is not None, "quitting stops the current chapter's worker"


def test_quitting_from_an_unread_story_starts_nothing() -> None:
    starter = Starter()
    app = tour_app(starter, names=("relu-explode",))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert isinstance(app.screen, ChapterScreen) and isinstance(app.source, HeldSource)
        assert "Exploding: plain SGD" in text_of(app.tour_banner, width=80)
        await pilot.press("q")
        await pilot.pause()

    drive(app, body, (80, 24))
    assert app.return_code == 0 and starter.started == []


class LiveStarter(Starter):
    """A tour's `start` whose runs keep stepping (one step a poll) and answer commands."""

    def __call__(self, chapter: Chapter) -> ScriptedSource:
        run = SyntheticRun("healthy", 3, run=f"demo: {chapter.name}")
        name = f"demo: {chapter.name}"
        source = ScriptedSource(run.events(5), run=run, steps_per_poll=1, name=name, owns_process=True)
        self.started.append(source)
        return source


def _notes(app: GradTUIApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


def test_each_chapter_starts_clean_and_r_runs_it_again() -> None:
    """Before the fix chapter 2 opened under chapter 1's "Chapter finished ... Press ." and
    "clip ... not sent: the run has ended", and going back from the last chapter said
    "That was the last chapter"."""
    from gradtui.model.events import RunEnd

    starter = Starter()
    app = tour_app(starter, names=("relu-explode", "relu-explode-clip"))
    messages: list[object] = []

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        starter.started[-1].feed([RunEnd(step=5, status="ok")])
        app.poll_source()
        await pilot.press("c")  # too late: the run has ended
        await pilot.press("plus")  # said once for every key, and never as "(ok)"
        notes = _notes(app)
        assert len(notes) == 2 and "Press . for the next chapter" in notes[0]
        assert notes[1] == "Nothing sent: the run finished."
        assert "r run again" in text_of(app.narrative_keys, width=200)
        await pilot.press("full_stop")
        assert _notes(app) == [], "the next chapter starts under no word of the last one"
        assert not any("sent" in line for line in app.alert_log.plain_lines)
        assert "r run again" not in text_of(app.narrative_keys, width=200)
        starter.started[-1].feed([RunEnd(step=6, status="ok")])
        app.poll_source()
        await pilot.pause()
        assert any("That was the last chapter. Press r to run it again." in n for n in _notes(app))
        await pilot.press("comma")
        assert _notes(app) == []
        assert app.tour is not None and app.tour.index == 0
        # r: the same chapter again, a fresh run on a clean screen.
        old = app.source
        await pilot.press("c")  # pending when the chapter restarts
        await pilot.press("r")
        assert app.tour.index == 0 and app.source is starter.started[-1] and app.source is not old
        check_chapter_named(app, starter, "relu-explode")

    drive(app, body, (160, 48), messages)
    started = [m.index for m in messages if isinstance(m, ChapterStarted)]
    assert started == [0, 1, 0, 0]


def check_chapter_named(app: GradTUIApp, starter: Starter, name: str) -> None:
    """A fresh source runs chapter `name`, the earlier ones are closed, the store holds only the new run."""
    assert app.source is starter.started[-1] and app.source.name == f"demo: {name}"
    assert app.wait_retired(5.0) and all(s.closed for s in starter.started[:-1])
    assert app.store.run is not None and app.store.run.run == f"demo: {name}"
    assert app.store.total_steps == starter.steps_of(starter.started[-1])
    assert not app.controls.pending and app.alert_log.plain_lines == []


def test_r_restarts_at_once_below_120_columns() -> None:
    starter = Starter()
    app = tour_app(starter, names=("sigmoid", "sigmoid-relu-he"))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("escape")  # the story read, the chapter runs
        assert len(starter.started) == 1
        await pilot.press("r")
        assert not isinstance(app.screen, ChapterScreen), "a restart does not make you read the story again"
        assert len(starter.started) == 2
        check_chapter_named(app, starter, "sigmoid")

    drive(app, body, (80, 24))


def test_training_waits_while_the_story_or_the_help_covers_the_chapter() -> None:
    """Before the fix the chapter trained on behind `?` and `t` (chapter 1 finished while help was open)."""
    from gradtui.model.commands import SetPaused

    starter = LiveStarter()
    app = tour_app(starter, names=("sigmoid", "sigmoid-relu-he"))

    async def poll(times: int = 3) -> int:
        for _ in range(times):
            app.poll_source()
        await pilot_pause()
        assert app.store.last is not None
        return app.store.last.step

    pilot_pause: Callable[[], Awaitable[None]]

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        nonlocal pilot_pause
        pilot_pause = pilot.pause
        source = starter.started[-1]
        running = await poll()
        for key in ("question_mark", "t"):
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(source.sent[-1], SetPaused) and source.sent[-1].paused, key
            stopped = await poll()
            assert await poll() == stopped, f"training went on under {key}"
            assert app.controls.actual().paused
            await pilot.press("escape")
            await pilot.pause()
            assert isinstance(source.sent[-1], SetPaused) and not source.sent[-1].paused
            assert await poll() > stopped > running
        # On the record as any pause: each acknowledged at the step it took effect.
        results = [(r.kind, r.ok) for r in app.store.results]
        assert results == [("set_paused", True)] * 4
        # But not in the alert log, where they pushed the real alerts away (four lines a key).
        assert not [line for line in app.alert_log.plain_lines if "pause" in line or "resum" in line]
        assert app.status_header.last_result is None
        # The user's own pause is theirs to see.
        await pilot.press("p")
        await poll()
        assert any("pause applied" in line for line in app.alert_log.plain_lines)
        # A pause of the user's stays theirs: the help neither pauses again nor resumes.
        sent = len(source.sent)
        await pilot.press("question_mark")
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert len(source.sent) == sent and app.controls.actual().paused

    drive(app, body, (160, 48))
