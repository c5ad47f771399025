"""The viewer over a replayed record: seeking rebuilds the whole picture, nothing stale survives."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.pilot import Pilot

from gradtui.model.commands import SetClip
from gradtui.model.events import RunEnd
from gradtui.sources.replay import ReplaySource
from gradtui.sources.synthetic import SyntheticRun
from gradtui.ui.app import GradTUIApp, make_app
from gradtui.wire.record import RecordWriter

MANUAL = 0.001
"""A refresh rate that never fires in a test: the test polls."""
CLIP_AT = 300


def _record(path: Path, steps: int = 400) -> Path:
    """A synthetic run whose clipping is turned on at step `CLIP_AT` (a CommandResult in the record)."""
    run = SyntheticRun("healthy", 4)
    writer = RecordWriter(path)
    for ev in run.events(CLIP_AT):
        writer.write(ev)
    run.commands.put(SetClip("norm", 1.0))
    for ev in run.events(steps - CLIP_AT):
        writer.write(ev)
    writer.write(RunEnd(steps, "ok"))
    writer.close()
    return path


def test_seeking_back_past_an_intervention_forgets_it(tmp_path: Path) -> None:
    """Before the fix, `<` from step 350 kept "clip applied @ step 300" in the header and the
    alert log, and repeated `<` reached "step -1"."""
    source = ReplaySource(_record(tmp_path / "run.gtr"), follow=False, paused=True)
    assert source.wait_indexed()
    app = make_app(source, refresh_hz=MANUAL)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert app.replay is not None
        app.replay.seek(350)
        app.poll_source()
        assert app.store.last is not None and app.store.last.step == 350
        assert app.status_header.last_result is not None and app.status_header.last_result.step == CLIP_AT
        assert any("clip" in line for line in app.alert_log.plain_lines)
        await pilot.press("less_than_sign")  # 250: before the clipping
        app.poll_source()
        assert app.store.last is not None and app.store.last.step == 250
        assert app.status_header.last_result is None
        assert not any("clip" in line for line in app.alert_log.plain_lines)
        assert "applied" not in app.status_header.plain and "clip off" in app.status_header.plain
        await pilot.press("less_than_sign", "less_than_sign", "less_than_sign", "less_than_sign")
        app.poll_source()
        assert app.store.last is not None and app.store.last.step == 0 and app.store.count == 1
        assert "step 0/399" in app.status_header.plain and "step -1" not in app.status_header.plain
        await pilot.press("greater_than_sign", "greater_than_sign", "greater_than_sign", "greater_than_sign")
        app.poll_source()
        assert app.store.last is not None and app.store.last.step == 399 and app.store.end is not None
        assert app.status_header.last_result is not None and app.status_header.last_result.step == CLIP_AT

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())
