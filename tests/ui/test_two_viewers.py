"""Two viewers of one run, as a user has them: `gradtui run` in one pane, `gradtui attach` in
another. Each follows every acknowledgement on the record, whoever sent the command."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from attach_helpers import env_for, stop_process, wait_for, write_scripts
from textual.message import Message

from gradtui.model.commands import SetPaused
from gradtui.sources.attach import SocketSource
from gradtui.sources.child import RunSource
from gradtui.ui.app import GradTUIApp, make_app
from gradtui.ui.messages import InterventionSent
from gradtui.wire import runs

SHOWN_WITHIN_S = 1.0
"""How soon the other viewer must show a pause (the issue's bar; the run steps every 10 ms)."""


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait, letting both apps run, until `check()`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


def _state(app: GradTUIApp) -> str:
    return app.status_header.plain.splitlines()[0]


def test_a_pause_from_one_viewer_shows_in_the_other_whose_p_then_resumes(tmp_path: Path) -> None:
    """Before the fix the `gradtui run` viewer kept showing "▶ running" after the attached one
    paused the run, and its `p` sent a second pause."""
    rt = tmp_path / "rt"
    train, _ = write_scripts(tmp_path)
    stop = tmp_path / "stop"
    run = RunSource([sys.executable, str(train), "--until", str(stop), "--sleep", "0.01"], env=env_for(rt))
    attached: SocketSource | None = None
    try:
        info = wait_for(lambda: [r for r in runs.list_runs(rt) if r.socket], 60, "the run's socket")[0]
        assert info.socket is not None
        attached = SocketSource(info.socket)
        first = make_app(run)  # the viewer `gradtui run` started
        second = make_app(attached)  # `gradtui attach` in another pane
        sent: list[Message] = []
        sent_at: list[float] = []

        def sending(message: Message) -> None:
            if isinstance(message, InterventionSent):
                sent_at.append(time.monotonic())

        async def main() -> None:
            async with (
                first.run_test(size=(120, 40), message_hook=sent.append) as one,
                second.run_test(size=(120, 40), message_hook=sending) as two,
            ):
                await _until(lambda: first.store.last is not None and second.store.last is not None, 60, "steps")
                assert "▶ running" in _state(first) and "▶ running" in _state(second)

                await two.press("p")
                await _until(lambda: "⏸ paused" in _state(first), 10, "the pause in the other viewer")
                took = time.monotonic() - sent_at[0]
                assert took < SHOWN_WITHIN_S, f"the other viewer showed the pause {took:.2f} s after it was sent"
                # The viewer that sent it hears the same acknowledgement on its own socket: on a loaded
                # box a moment after the other one.
                await _until(lambda: "⏸ paused" in _state(second), 10, "the pause in the viewer that sent it")
                paused_at = first.store.last_step
                await asyncio.sleep(0.3)
                assert first.store.last_step == paused_at, "the run is paused"

                await one.press("p")  # acts on the state the run is in: a resume
                ours = [m.command for m in sent if isinstance(m, InterventionSent)]
                assert len(ours) == 1 and isinstance(ours[0], SetPaused) and not ours[0].paused
                await _until(lambda: "▶ running" in _state(second), 10, "the resume in the viewer that paused")
                await _until(lambda: first.store.last_step > paused_at + 5, 10, "steps after the resume")
                assert "▶ running" in _state(first)
                # The log of the viewer that did not send the pause names it in words.
                assert any("✓ pause applied: paused" in line for line in first.alert_log.plain_lines)
                await two.press("q")  # leaving the attached viewer leaves the run alone
                await one.press("q")
                await one.press("y")  # and the viewer that started it stops it

        asyncio.run(main())
    finally:
        if attached is not None:
            attached.close()
        stop.touch()
        run.close()
        stop_process(run.process)


@pytest.fixture(autouse=True)
def _runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRADTUI_RUNTIME_DIR", str(tmp_path / "rt"))
