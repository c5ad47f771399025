"""A deep capture in the viewer: its span on the heatmap's step axis, the activation and
optimizer-state views `s` adds (only where a capture measured them), the first non-finite
module in the alert log and on the layer page, and the key that asks the run for one.

The events are built here (the probe's side of a capture is `gradtui.probe.capture`): a run
of 60 steps, sampled at every one, with a capture over steps 40-47 that found the origin.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
from textual.pilot import Pilot
from ui_helpers import manual_app, run_start, step_stats, synthetic_source, text_of

from gradtui.model.commands import NO_CAPTURE
from gradtui.model.commands import Capture as CaptureCommand
from gradtui.model.events import Capture, CaptureStats, CommandResult, Event, NonFiniteOrigin
from gradtui.sources.synthetic import ScriptedSource
from gradtui.ui.app import GradTUIApp
from gradtui.ui.scale import EMPTY, HEATMAP_STATS, NONFINITE
from gradtui.ui.screens.detail import LayerDetailScreen

STEPS = 60
FIRST, LAST = 40, 47
"""The capture's steps."""
ORIGIN = NonFiniteOrigin(45, "fc1", 1, "forward", "inf", 3.4e38)
ACT_RMS = np.array([0.5, 2.0, 0.1])
ACT_MAX = np.array([3.0, 50.0, 0.4])

Body = Callable[[GradTUIApp, Pilot[None]], Awaitable[None]]


def capture_stats(step: int, *, moments: bool) -> CaptureStats:
    nan = np.full(3, np.nan)
    nonfinite = np.array([0, 4, 0]) if step == ORIGIN.step else np.zeros(3, np.int64)
    return CaptureStats(
        step,
        act_rms=ACT_RMS * (step - FIRST + 1),
        act_max=ACT_MAX,
        act_nonfinite=nonfinite,
        act_kurtosis=np.full(3, 3.0),
        opt_m1=np.array([1e-3, 2e-3, 3e-3]) if moments else nan,
        opt_m2=np.array([1e-6, 2e-6, 3e-6]) if moments else nan,
    )


def run_events(*, capture: bool = True, moments: bool = False, steps: int = STEPS) -> list[Event]:
    """The run: StepStats at every step; with `capture`, the capture's events at their steps, as a
    probe sends them (armed, each step's statistics after its StepStats, the origin, ended)."""
    events: list[Event] = [run_start(3)]
    for s in range(steps):
        events.append(step_stats(s, [1.0, 2.0, 0.5]))
        if not capture:
            continue
        if s == FIRST:
            events.append(Capture(s, FIRST, LAST - FIRST + 1, "asked from the viewer"))
        if FIRST <= s <= LAST:
            events.append(capture_stats(s, moments=moments))
        if s == ORIGIN.step:
            events.append(ORIGIN)
        if s == LAST:
            events.append(Capture(s, FIRST, LAST - FIRST + 1, "asked from the viewer", ended=True))
    return events


def drive(app: GradTUIApp, body: Body, size: tuple[int, int] = (120, 36)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            app.poll_source()
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())


def axis_line(app: GradTUIApp) -> str:
    return app.heatmap.render_line(1).text


def legend_line(app: GradTUIApp) -> str:
    return app.heatmap.render_line(0).text


async def cycle(app: GradTUIApp, pilot: Pilot[None], presses: int) -> list[str]:
    seen = [app.heatmap.stat]
    for _ in range(presses):
        await pilot.press("s")
        seen.append(app.heatmap.stat)
    return seen


def test_s_cycles_to_the_activation_views_after_a_capture_and_the_moments_only_where_measured() -> None:
    async def sgd(app: GradTUIApp, pilot: Pilot[None]) -> None:
        # Plain SGD keeps no moments: the optimizer-state rows are no view of this run.
        assert await cycle(app, pilot, 7) == [*HEATMAP_STATS, "act_rms", "act_max", "health"]

    drive(manual_app(ScriptedSource(run_events())), sgd)

    async def adam(app: GradTUIApp, pilot: Pilot[None]) -> None:
        views = await cycle(app, pilot, 9)
        assert views == [*HEATMAP_STATS, "act_rms", "act_max", "opt_m1", "opt_m2", "health"]

    drive(manual_app(ScriptedSource(run_events(moments=True))), adam)

    async def none(app: GradTUIApp, pilot: Pilot[None]) -> None:
        # A run with no capture keeps the usual cycle (a capture armed but not yet measured adds nothing).
        assert await cycle(app, pilot, 5) == [*HEATMAP_STATS, "health"]

    events = run_events(capture=False)
    drive(manual_app(ScriptedSource([*events, Capture(STEPS - 1, STEPS - 1, 32, "mon.capture()")])), none)


def test_an_activation_view_shows_the_capture_window_and_nothing_outside_it() -> None:
    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await cycle(app, pilot, len(HEATMAP_STATS))
        assert app.heatmap.stat == "act_rms" and "rms(a)" in str(app.heatmap.border_title)
        view = app.heatmap._view
        assert view is not None and view.steps_per_col == 1 and view.last_step == STEPS - 1
        codes = view.codes[:, -STEPS:]  # one column a step: step s in column s of these
        window = np.zeros(STEPS, bool)
        window[FIRST : LAST + 1] = True
        assert (codes[:, ~window] == EMPTY).all()
        assert (codes[:, window] != EMPTY).all()
        # fc1's output went non-finite at the origin's step: its cell says so; the others' do not.
        assert codes[1, ORIGIN.step] == NONFINITE
        assert (codes[[0, 2], ORIGIN.step] != NONFINITE).all()
        # The value column: each layer's newest measured rms (the capture's last step).
        np.testing.assert_allclose(view.values, ACT_RMS * (LAST - FIRST + 1))

    drive(manual_app(ScriptedSource(run_events())), body)


def test_the_capture_runs_under_its_steps_on_the_heatmaps_axis() -> None:
    """The same run without its capture draws the axis without the mark: the mark changes exactly
    the blank characters under steps 40-47 (one column a step: step s is STEPS - 1 - s from the
    right end of the cells), and the legend names it."""
    lines: dict[bool, tuple[str, str]] = {}

    def keep(capture: bool) -> Body:
        async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
            lines[capture] = (axis_line(app), legend_line(app))

        return body

    for capture in (False, True):
        drive(manual_app(ScriptedSource(run_events(capture=capture))), keep(capture))
    (plain, plain_legend), (marked, legend) = lines[False], lines[True]
    assert len(plain) == len(marked) and "━" not in plain
    end = len(plain.rstrip())  # the newest step's label ends under the last cell
    under = {end - 1 - (STEPS - 1 - s) for s in range(FIRST, LAST + 1)}
    changed = {x for x, (a, b) in enumerate(zip(plain, marked, strict=True)) if a != b}
    assert changed == {x for x in under if plain[x] == " "} and len(changed) >= 6
    assert all(marked[x] == "━" for x in changed)
    assert "━ capture" in legend and "capture" not in plain_legend


def test_the_alert_log_names_the_capture_and_the_first_non_finite_module() -> None:
    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        lines = app.alert_log.plain_lines
        assert lines == [
            "step 40 ━ capture armed for 8 steps: asked from the viewer",
            "× first non-finite: fc1 forward output, step 45, Inf; its input max 3.4e+38",
            "step 47 ━ capture ended (steps 40-47)",
        ]

    drive(manual_app(ScriptedSource(run_events())), body)


def test_the_layer_page_shows_the_capture_rows_and_the_origin_only_where_there_are_some() -> None:
    async def open_page(app: GradTUIApp, pilot: Pilot[None], layer: int) -> LayerDetailScreen:
        app.push_screen(LayerDetailScreen(app.store, layer))
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, LayerDetailScreen)
        return screen

    async def captured(app: GradTUIApp, pilot: Pilot[None]) -> None:
        page = await open_page(app, pilot, 1)
        for stat in ("act_rms", "act_max", "act_kurtosis", "act_nonfinite"):
            assert page.query_one(f"#row-{stat}").display, stat
        for stat in ("opt_m1", "opt_m2"):  # plain SGD keeps no moments: no empty rows for them
            assert not page.query_one(f"#row-{stat}").display, stat
        # fc1: 2.0 x 1..8 over the capture, newest at its last step
        assert text_of(page.query_one("#values-act_rms")) == "1.6e+01 @47  2.0e+00 … 1.6e+01"
        alerts = text_of(page.query_one("#detail-alert-list"))
        assert f"× {ORIGIN.words()}  (this layer)" in alerts
        await pilot.press("j")  # fc2: the origin is named, not as this layer
        alerts = text_of(page.query_one("#detail-alert-list"))
        assert f"× {ORIGIN.words()}" in alerts and "(this layer)" not in alerts

    drive(manual_app(ScriptedSource(run_events())), captured, size=(140, 50))

    async def adam(app: GradTUIApp, pilot: Pilot[None]) -> None:
        page = await open_page(app, pilot, 2)
        for stat in ("act_rms", "opt_m1", "opt_m2"):
            assert page.query_one(f"#row-{stat}").display, stat
        assert text_of(page.query_one("#values-opt_m2")) == "3.0e-06 @47  3.0e-06 … 3.0e-06"

    drive(manual_app(ScriptedSource(run_events(moments=True))), adam, size=(140, 50))

    async def plain(app: GradTUIApp, pilot: Pilot[None]) -> None:
        page = await open_page(app, pilot, 1)
        for stat in ("act_rms", "act_max", "act_kurtosis", "act_nonfinite", "opt_m1", "opt_m2"):
            assert not page.query_one(f"#row-{stat}").display, stat
        for stat in ("grad_norm", "mean_abs", "update_ratio"):
            assert page.query_one(f"#row-{stat}").display, stat
        assert "first non-finite" not in text_of(page.query_one("#detail-alert-list"))

    drive(manual_app(ScriptedSource(run_events(capture=False))), plain, size=(140, 50))


def test_d_asks_the_run_for_a_capture_and_says_why_a_probe_without_captures_refused() -> None:
    src = synthetic_source(layers=4, prefill=5, steps_per_poll=0)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("d")
        assert len(src.sent) == 1 and isinstance(src.sent[0], CaptureCommand)
        assert src.sent[0].steps == 32
        assert app.alert_log.plain_lines[-1] == "… capture 32 steps pending"
        app.poll_source()
        await pilot.pause()
        # Taking effect at the next step boundary (step 5), the probe of this run refuses it, saying why.
        assert app.alert_log.plain_lines[-1] == f"step 5 ✗ capture 32 steps refused: {NO_CAPTURE}"
        assert not app.controls.pending and "capture" in app.status_header.plain

    drive(manual_app(src), body)


def test_a_capture_the_run_took_is_on_the_heatmaps_axis_and_on_no_chart() -> None:
    """A capture changes nothing in the training: no letter on the loss, norm or lr charts (before:
    a "*" on each), where an intervention acknowledged beside it keeps its own."""
    events = run_events()
    at = events.index(next(e for e in events if isinstance(e, Capture)))
    events[at:at] = [CommandResult("c1", "capture", True, FIRST, "capture armed for 8 steps")]
    events.append(CommandResult("c2", "set_lr", True, 50, "lr 0.1 -> 0.05 (all groups)"))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        for chart in app.charts:
            assert [(m.step, m.glyph) for m in chart.chart(8).markers] == [(50, "L")], chart.id
        assert "━" in axis_line(app)

    drive(manual_app(ScriptedSource(events)), body)
