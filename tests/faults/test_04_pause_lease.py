"""Item 4: a pause belongs to the viewer that made it, and outlives it only by a lease."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
from fault_helpers import RawViewer, tiny_run, wait_for

from gradtui.model.commands import SetPaused
from gradtui.model.events import CommandResult, LogLine
from gradtui.probe import control
from gradtui.wire import codec as wire
from gradtui.wire import runs
from gradtui.wire.record import read_record


def test_a_pause_ends_a_lease_after_its_viewer_left_and_the_record_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "PAUSE_LEASE", 0.5)
    mon, step = tiny_run(tmp_path)
    assert mon.server is not None and mon.server.socket_path is not None and mon.server.meta_path is not None
    stop = threading.Event()

    def train() -> None:
        while not stop.is_set():
            step()

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    viewer = RawViewer(mon.server.socket_path)
    viewer.send(wire.encode(SetPaused(True)))
    wait_for(lambda: mon.paused, 10, "the pause")
    meta_path = mon.server.meta_path

    def sidecar_says_who() -> bool:
        found = runs.list_runs(meta_path.parent)
        return bool(found) and "paused by viewer #1 (tester@faults)" in runs.format_table(found)

    wait_for(sidecar_says_who, 10, "`gradtui ls` to say who paused")
    paused_at = mon.step_count
    viewer.close()
    wait_for(lambda: not mon.paused, 10, "training to resume once the lease is over")
    wait_for(lambda: mon.step_count > paused_at + 3, 10, "training to go on")
    wait_for(lambda: json.loads(meta_path.read_text()).get("paused_by") is None, 10, "the sidecar to forget the pause")
    stop.set()
    trainer.join(10)
    mon.close()

    events = read_record(tmp_path / "run.gtr").events
    resumed = [e for e in events if isinstance(e, CommandResult) and e.kind == "set_paused" and e.ok]
    assert [r.message.split(":")[0] for r in resumed] == ["paused", "resumed"]
    assert "tester@faults" in resumed[1].message and "left" in resumed[1].message
    notes = [e.text for e in events if isinstance(e, LogLine) and "paused training" in e.text]
    assert len(notes) == 1 and "resumes in 0.5 s" in notes[0]


def test_a_pause_holds_while_its_viewer_stays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "PAUSE_LEASE", 0.2)
    mon, step = tiny_run(tmp_path)
    assert mon.server is not None and mon.server.socket_path is not None
    viewer = RawViewer(mon.server.socket_path)
    viewer.send(wire.encode(SetPaused(True)))
    trainer = threading.Thread(target=lambda: [step() for _ in range(3)], daemon=True)
    trainer.start()
    wait_for(lambda: mon.paused, 10, "the pause")
    trainer.join(1.0)
    assert trainer.is_alive() and mon.paused, "still paused while the viewer is connected"
    viewer.send(wire.encode(SetPaused(False)))
    trainer.join(10)
    assert not trainer.is_alive()
    mon.close()
    viewer.close()


def test_quitting_a_viewer_that_holds_the_pause_asks_and_can_resume_first() -> None:
    import asyncio

    from textual.pilot import Pilot

    sys.path.insert(0, str(Path(__file__).parents[1] / "ui"))
    from ui_helpers import manual_app, synthetic_source

    from gradtui.ui.app import GradTUIApp
    from gradtui.ui.screens.dialogs import ConfirmQuit

    src = synthetic_source(layers=3, prefill=3)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("p")
        app.poll_source()
        await pilot.pause()
        assert app.controls.holds_pause()
        await pilot.press("q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmQuit) and app.screen.paused
        await pilot.press("r")
        await pilot.pause()
        assert isinstance(src.sent[-1], SetPaused) and not src.sent[-1].paused

    async def main() -> None:
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())
