"""The viewer over the other kinds of source: a child process (output, crash, detach),
a replayed record (playback keys instead of interventions), and a live timer under screens."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Button
from ui_helpers import manual_app, synthetic_source, text_of

from gradtui.model.events import LogLine, RunEnd
from gradtui.sources.synthetic import ScriptedSource, SyntheticRun
from gradtui.ui.app import GradTUIApp, make_app
from gradtui.ui.screens.detail import LayerDetailScreen
from gradtui.ui.screens.dialogs import ConfirmQuit, RunErrorScreen

Body = Callable[[GradTUIApp, Pilot[None]], Awaitable[None]]


def drive(app: GradTUIApp, body: Body, size: tuple[int, int] = (100, 30)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())


class ChildLike(ScriptedSource):
    """Like RunSource: owns a process, can detach from it."""

    can_detach = True

    def __init__(self) -> None:
        run = SyntheticRun("healthy", 4)
        super().__init__(run.events(5), owns_process=True, name="run: train.py")
        self.detached = False

    def detach(self) -> str:
        self.detached = True
        return "train.py keeps running"


def test_o_shows_the_training_output() -> None:
    src = synthetic_source(layers=3, prefill=3, steps_per_poll=0)
    src.feed([LogLine("epoch 1 loss 0.5", "output"), LogLine("warning: slow", "stderr")])
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert not app.output_log.display
        await pilot.press("o")
        assert app.output_log.display and not app.alert_log.display
        assert app.output_log.plain_lines == ["epoch 1 loss 0.5", "warning: slow"]
        await pilot.press("o")
        assert app.alert_log.display

    drive(app, body)


def test_a_process_that_dies_shows_its_last_output() -> None:
    tb = ["Traceback (most recent call last):", '  File "train.py", line 9', "ZeroDivisionError: division by zero"]
    src = synthetic_source(layers=3, prefill=3, steps_per_poll=0)
    src.feed([LogLine(line, "output") for line in tb])
    src.feed([RunEnd(step=-1, status="error", error="the training process exited with code 1")])
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert isinstance(app.screen, RunErrorScreen)
        text = text_of(app.screen.query_one("#traceback-text"))
        assert "exited with code 1" in text and "ZeroDivisionError: division by zero" in text
        assert "step -1" not in text_of(app.screen.query_one(".dialog-title"))

    drive(app, body)


def _dialog_words(app: GradTUIApp) -> list[str]:
    """The dialog's question, then its buttons."""
    return [text_of(app.screen.query_one(".dialog-title")), *(str(b.label) for b in app.screen.query(Button))]


def test_quit_can_leave_the_process_running() -> None:
    src = ChildLike()
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuit)
        # Before the fix: "Quitting stops the training process." above a "Leave it running" button.
        words = _dialog_words(app)
        assert words == [
            "This viewer started the training process.\nQuit and stop it, or quit and leave it running?",
            "Stop it and quit (y)",
            "Quit, leave it running (d)",
            "Stay (n)",
        ]
        await pilot.press("d")
        await pilot.pause()
        assert src.detached and src.closed

    drive(app, body)


def test_quit_says_it_stops_a_process_it_cannot_leave_running() -> None:
    src = ChildLike()
    src.can_detach = False  # as the demo's worker, which lives and dies with its viewer
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuit)
        words = _dialog_words(app)
        assert words == ["Quitting stops the training process this viewer started.", "Stop it and quit (y)", "Stay (n)"]
        await pilot.press("y")
        await pilot.pause()
        assert src.closed and not src.detached

    drive(app, body)


def test_replay_keys_drive_the_playback(tmp_path: Path) -> None:
    from gradtui.sources.replay import ReplaySource
    from gradtui.wire.record import RecordWriter

    path = tmp_path / "run.gtr"
    writer = RecordWriter(path)
    for ev in SyntheticRun("exploding", 6).events(400):
        writer.write(ev)
    writer.write(RunEnd(400, "ok"))
    writer.close()
    source = ReplaySource(path, speed=float("inf"), follow=False)
    app = make_app(source, refresh_hz=20)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        from textual.widgets._footer import FooterKey

        await pilot.pause(0.5)
        assert app.replay is not None and app.store.last is not None
        keys = {k.key for k in app.screen.query(FooterKey)}
        assert "c" not in keys and "l" not in keys, "no interventions on a recorded run"
        assert "p" in keys and "plus" in keys
        assert "replay" in app.status_header.plain
        speed = app.replay.speed
        await pilot.press("p")
        assert not app.replay.playing
        await pilot.press("-")
        assert app.replay.speed == speed / 2 or app.replay.speed < speed
        await pilot.press("less_than_sign")
        await pilot.pause(0.3)
        assert app.store.last is not None and app.store.last.step <= 320
        await pilot.press("c")  # disabled: nothing happens, nothing breaks

    drive(app, body)


def test_the_timer_keeps_running_under_the_detail_screen_and_dialogs() -> None:
    app = make_app(synthetic_source("nan", layers=6, prefill=100, steps_per_poll=5), refresh_hz=30)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("enter")
        assert isinstance(app.screen, LayerDetailScreen)
        before = app.store.last.step if app.store.last else -1
        await pilot.pause(0.4)
        assert app.store.last is not None and app.store.last.step > before
        await pilot.press("escape", "question_mark")
        await pilot.pause(0.3)
        await pilot.press("escape", "l")
        await pilot.pause(0.3)
        await pilot.press("escape")

    drive(app, body)
