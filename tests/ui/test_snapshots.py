"""Whole screens fed recorded (scripted, seeded) events: healthy, vanishing, exploding, help,
and the exploding run in each theme and under NO_COLOR.

Regenerate with `pytest tests/ui/test_snapshots.py --snapshot-update` and look at the
SVGs in tests/ui/__snapshots__ before committing them.
"""

from __future__ import annotations

from typing import Any

import pytest
from ui_helpers import manual_app

from gradtui.sources.synthetic import ScriptedSource, SyntheticRun
from gradtui.ui.app import GradTUIApp
from gradtui.ui.themes import THEMES


def recorded(scenario: str, layers: int, steps: int, **kwargs: Any) -> GradTUIApp:
    """An app fed a fixed, seeded recording; the clock comes from the events."""
    run = SyntheticRun(scenario, layers, run=f"{scenario}-mlp", **kwargs)
    return manual_app(ScriptedSource(run.events(steps), name=f"replay: {scenario}.gtr"))


def test_healthy_80x24(snap_compare: Any) -> None:
    assert snap_compare(recorded("healthy", 12, 300), terminal_size=(80, 24))


def test_vanishing_wide_120x36(snap_compare: Any) -> None:
    assert snap_compare(recorded("vanishing", 24, 400), terminal_size=(120, 36))


def test_exploding_with_interventions_100x30(snap_compare: Any) -> None:
    run = SyntheticRun("exploding", 16, run="exploding-mlp")
    source = ScriptedSource(run.events(150), run=run, steps_per_poll=20, name="replay: exploding.gtr")
    app = manual_app(source)

    async def intervene(pilot: Any) -> None:
        await pilot.press("c", "-")  # clip on, lr halved: both acknowledged at the next poll
        app.poll_source()
        await pilot.pause()
        app.poll_source()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=intervene)


def test_help_80x24(snap_compare: Any) -> None:
    assert snap_compare(recorded("healthy", 4, 20), terminal_size=(80, 24), press=["question_mark"])


def _sizes() -> list[tuple[int, int]]:
    return [(80, 24), (120, 40), (200, 60)]


@pytest.mark.parametrize("size", _sizes(), ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("scenario", ["healthy", "exploding"])
def test_screens(snap_compare: Any, scenario: str, size: tuple[int, int]) -> None:
    assert snap_compare(recorded(scenario, 12, 300), terminal_size=size)


def test_exploding_no_color_120x40(snap_compare: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(recorded("exploding", 12, 300), terminal_size=(120, 40))


@pytest.mark.parametrize("theme", list(THEMES))
def test_exploding_in_each_theme_120x40(snap_compare: Any, theme: str) -> None:
    app = recorded("exploding", 12, 300)

    async def use_theme(pilot: Any) -> None:
        app.theme = theme
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 40), run_before=use_theme)
