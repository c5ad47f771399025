"""Every key of the viewer against a scripted run that answers commands like the probe.

The app's timer is off (`manual_app`): each test polls the source itself, so it can see
a command pending before the acknowledgement and applied after it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

import pytest
from textual.pilot import Pilot
from ui_helpers import manual_app, synthetic_source, text_of

from gradtui.model.commands import AUTO_CLIP_Z, SetClip, SetLR, SetPaused
from gradtui.ui.app import GradTUIApp
from gradtui.ui.screens.dialogs import ConfirmQuit, LRDialog
from gradtui.ui.screens.help import HelpScreen
from gradtui.ui.widgets.alert_log import AlertLog
from gradtui.ui.widgets.layer_heatmap import LayerHeatmap
from gradtui.ui.widgets.status import StatusHeader

Scenario = Callable[[GradTUIApp, Pilot[None]], Awaitable[None]]


def drive(app: GradTUIApp, body: Scenario, size: tuple[int, int] = (120, 36)) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await pilot.pause()
            await body(app, pilot)

    asyncio.run(main())


def status(app: GradTUIApp) -> str:
    return app.query_one(StatusHeader).plain


def log_text(app: GradTUIApp) -> str:
    return "\n".join(app.query_one(AlertLog).plain_lines)


def notes(app: GradTUIApp) -> list[str]:
    """The toasts showing."""
    return [str(n.message) for n in app._notifications]


async def ack(app: GradTUIApp, pilot: Pilot[None]) -> None:
    """One poll: the scripted run applies the command at its next step and answers."""
    app.poll_source()
    await pilot.pause()


@pytest.mark.parametrize(
    ("keys", "check", "before", "after"),
    [
        ("c", lambda c: isinstance(c, SetClip) and c.mode == "norm" and c.threshold == 1.0, "clip off", "clip norm ≤1"),
        ("]", lambda c: isinstance(c, SetClip) and c.mode == "off" and c.threshold == 2.0, "clip off (≤1)", "(≤2)"),
        ("[", lambda c: isinstance(c, SetClip) and c.mode == "off" and c.threshold == 0.5, "clip off (≤1)", "(≤0.5)"),
        ("+", lambda c: isinstance(c, SetLR) and c.factor == 2.0 and c.value is None, "lr 0.1 ", "lr 0.2 "),
        ("-", lambda c: isinstance(c, SetLR) and c.factor == 0.5, "lr 0.1 ", "lr 0.05 "),
        ("p", lambda c: isinstance(c, SetPaused) and c.paused, "▶ running", "⏸ paused"),
    ],
)
def test_key_sends_command_pending_until_acknowledged(
    keys: str, check: Callable[[object], bool], before: str, after: str
) -> None:
    src = synthetic_source(layers=4, prefill=5)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert before in status(app)
        await pilot.press(keys)
        assert len(src.sent) == 1 and check(src.sent[0])
        assert "pending" in status(app) or "pausing" in status(app)
        assert "pending" in log_text(app)
        await ack(app, pilot)
        text = status(app)
        assert after in text, text
        assert "pending" not in text and "pausing" not in text
        assert app.store.last is not None
        assert f"applied @ step {app.store.last.step}" in text
        assert "applied" in log_text(app).splitlines()[-1]

    drive(app, body)


def test_clip_toggle_off_on_keeps_mode_and_threshold_and_m_cycles() -> None:
    src = synthetic_source(layers=4, prefill=3, clip_mode="value", clip_threshold=0.25)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert "clip value ≤0.25" in status(app)
        await pilot.press("m")
        # The adaptive mode, with its own threshold (a z-score, not the value's 0.25).
        assert src.sent[-1] == SetClip("auto", AUTO_CLIP_Z, id=src.sent[-1].id)
        await ack(app, pilot)
        assert f"clip auto {AUTO_CLIP_Z:g}σ" in status(app)
        await pilot.press("m")
        assert src.sent[-1] == SetClip("norm", 0.25, id=src.sent[-1].id)
        await ack(app, pilot)
        assert "clip norm ≤0.25" in status(app)
        await pilot.press("c")
        assert isinstance(src.sent[-1], SetClip) and src.sent[-1].mode == "off"
        await ack(app, pilot)
        assert "clip off" in status(app)
        await pilot.press("c")
        # Back on with the last mode and the threshold it had.
        assert src.sent[-1] == SetClip("norm", 0.25, id=src.sent[-1].id)
        await ack(app, pilot)
        assert "clip norm ≤0.25" in status(app)

    drive(app, body)


def test_two_quick_presses_compose_on_the_pending_state() -> None:
    src = synthetic_source(layers=4, prefill=3)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("+", "+")
        assert "lr 0.1 → 0.4 pending" in status(app)
        await ack(app, pilot)
        assert "lr 0.4" in status(app) and "pending" not in status(app)

    drive(app, body)


def test_pause_survives_until_resume_is_acknowledged() -> None:
    src = synthetic_source(layers=4, prefill=3)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("p")
        await ack(app, pilot)
        assert "⏸ paused" in status(app)
        step = app.store.last.step  # type: ignore[union-attr]
        await ack(app, pilot)  # paused: no new steps
        assert app.store.last.step == step  # type: ignore[union-attr]
        await pilot.press("p")
        assert isinstance(src.sent[-1], SetPaused) and not src.sent[-1].paused
        assert "resuming" in status(app)
        await ack(app, pilot)
        assert "▶ running" in status(app)
        await ack(app, pilot)
        assert app.store.last.step > step  # type: ignore[union-attr]

    drive(app, body)


def test_l_types_an_exact_lr_and_refuses_bad_values_in_the_dialog() -> None:
    src = synthetic_source(layers=4, prefill=3)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("l")
        assert isinstance(app.screen, LRDialog)
        await pilot.press(*"abc", "enter")
        assert isinstance(app.screen, LRDialog), "a bad value must not close the dialog"
        error = text_of(app.screen.query_one("#lr-error"))
        assert "'abc' is not a number" in error
        await pilot.press("backspace", "backspace", "backspace", "-", "1", "enter")
        assert "positive" in text_of(app.screen.query_one("#lr-error"))
        assert src.sent == []
        for _ in range(2):
            await pilot.press("backspace")
        await pilot.press(*"3e-4", "enter")
        assert not isinstance(app.screen, LRDialog)
        assert src.sent == [SetLR(value=3e-4, id=src.sent[0].id)]
        assert "→ 0.0003 pending" in status(app)
        await ack(app, pilot)
        assert "lr 0.0003" in status(app)

    drive(app, body)


def test_escape_cancels_the_lr_dialog() -> None:
    src = synthetic_source(layers=4, prefill=3)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("l", "1", "escape")
        assert not isinstance(app.screen, LRDialog)
        assert src.sent == []

    drive(app, body)


def test_interventions_are_refused_in_the_ui_when_they_cannot_apply() -> None:
    # No optimizer: no learning rate to change; the reason shows and nothing is sent.
    src = synthetic_source(layers=4, prefill=3)
    assert src.run is not None
    src.run.state = dataclasses.replace(src.run.state, lrs=(), schedule_lrs=())
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert app.store.run is not None
        app.store.run = dataclasses.replace(app.store.run, lrs=())
        await pilot.press("+")
        assert src.sent == []
        # One message: a toast (nothing reached the run, so nothing goes on its log).
        assert notes(app) == ["lr ×2 not sent: no optimizer is watched, so there is no learning rate to set"]
        assert "not sent" not in log_text(app)

    drive(app, body)


def test_commands_after_the_run_ended_are_refused() -> None:
    src = synthetic_source(layers=4, prefill=3, fail_at=3)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await ack(app, pilot)  # the fake run crashes at step 3
        await pilot.press("escape")  # close the error screen
        await pilot.press("c")
        assert src.sent == []
        assert notes(app) == ["Nothing sent: the run crashed."]
        # Every key after the end says the same, once: not a toast per key, and no "(error)" or "(ok)".
        for key in ("+", "-", "p", "c"):
            await pilot.press(key)
        assert src.sent == [] and notes(app) == ["Nothing sent: the run crashed."]
        assert "not sent" not in log_text(app)

    drive(app, body)


def test_s_cycles_the_statistic() -> None:
    app = manual_app(synthetic_source(layers=4, prefill=30))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        heatmap = app.query_one(LayerHeatmap)
        seen = [heatmap.stat]
        for _ in range(5):
            await pilot.press("s")
            seen.append(heatmap.stat)
        assert seen == ["health", "grad_norm", "mean_abs", "max_abs", "update_ratio", "health"]
        assert "stat mean|g|" not in status(app) and "stat health" in status(app)
        await pilot.press("s")
        assert "stat ‖g‖₂" in status(app)

    drive(app, body)


def test_question_mark_opens_help_listing_every_key() -> None:
    app = manual_app(synthetic_source(layers=4, prefill=3))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = text_of(app.screen.query_one("#help-body"))
        for key in ("c", "m", "]", "[", "+", "-", "l", "p", "s", "?", "q", "j / down", "ctrl+d"):
            assert f"\n{key} " in "\n" + text or f" {key} " in text, key
        await pilot.press("c")  # interventions are off under a dialog
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)

    drive(app, body)


def test_footer_shows_every_intervention_key() -> None:
    app = manual_app(synthetic_source(layers=4, prefill=3))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        from textual.widgets._footer import FooterKey

        keys = {k.key for k in app.screen.query(FooterKey)}
        assert {"c", "m", "right_square_bracket", "left_square_bracket", "plus", "minus", "l", "p", "s"} <= keys
        assert {"question_mark", "q", "o"} <= keys
        # Shown whole on an 80-column terminal, not cut at the edge (the palette's hint gives way: ? lists it).
        shown = sorted(app.screen.query(FooterKey), key=lambda k: k.region.x)
        cut = [a.key for a, b in zip(shown, shown[1:], strict=False) if a.region.right > b.region.x]
        assert not cut and shown[-1].region.right <= 80, cut
        await pilot.press("question_mark")
        assert "ctrl+p" in text_of(app.screen.query_one("#help-body"))

    drive(app, body, size=(80, 24))


def test_q_quits_at_once_without_a_child_process() -> None:
    src = synthetic_source(layers=4, prefill=3)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("q")
        await pilot.pause()
        assert src.closed

    drive(app, body)


def test_q_asks_before_stopping_a_child_process() -> None:
    src = synthetic_source(layers=4, prefill=3)
    src.owns_process = True
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmQuit)
        await pilot.press("n")
        assert not isinstance(app.screen, ConfirmQuit) and not src.closed
        await pilot.press("q", "y")
        await pilot.pause()
        assert src.closed

    drive(app, body)


def test_vim_navigation_and_jump_to_flagged_layers() -> None:
    app = manual_app(synthetic_source("exploding", layers=40, prefill=200))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        hm = app.query_one(LayerHeatmap)
        assert hm.cursor == 0
        await pilot.press("j", "j", "k")
        assert hm.cursor == 1
        await pilot.press("G")
        assert hm.cursor == 39
        assert hm.scroll_y > 0, "the cursor stays visible"
        await pilot.press("g")
        assert hm.cursor == 0 and hm.scroll_y == 0
        await pilot.press("ctrl+d")
        assert hm.cursor > 1
        await pilot.press("g", "n")
        flagged = {name for (name, _k) in app.store.active_flags}
        assert app.store.layers[hm.selected_layer].name in flagged  # type: ignore[index]
        await pilot.press("f")
        assert hm.flagged_only and hm.rows.size == len({n for n in flagged if n})
        await pilot.press("f")
        assert hm.rows.size == 40

    drive(app, body, size=(100, 30))


def test_enter_opens_the_layer_detail_with_every_statistic() -> None:
    app = manual_app(synthetic_source("nan", layers=12, prefill=150))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        from gradtui.ui.screens.detail import LayerDetailScreen

        await pilot.press("G", "enter")
        assert isinstance(app.screen, LayerDetailScreen)
        title = text_of(app.screen.query_one("#detail-title"))
        assert app.store.layers[11].name in title and "non-finite" in title
        for stat in ("grad_norm", "mean_abs", "max_abs", "update_ratio", "weight_norm", "zero_frac", "nonfinite"):
            assert text_of(app.screen.query_one(f"#values-{stat}")).strip()
        alerts = text_of(app.screen.query_one("#detail-alert-list"))
        assert "non-finite" in alerts
        await pilot.press("k")
        assert app.store.layers[10].name in text_of(app.screen.query_one("#detail-title"))
        await pilot.press("escape")
        assert isinstance(app.screen.query_one(LayerHeatmap), LayerHeatmap)

    drive(app, body)


def test_shift_l_releases_the_overrides_to_the_loop() -> None:
    app = manual_app(synthetic_source(layers=4, prefill=3))

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        await pilot.press("-")
        await ack(app, pilot)
        await ack(app, pilot)
        assert "lr 0.05 (loop 0.1)" in status(app), "an override shows the loop's own learning rate"
        await pilot.press("L")
        await ack(app, pilot)
        await ack(app, pilot)
        assert "released: lr 0.05 -> 0.1 (back to the loop's schedule)" in log_text(app).replace("\n", " ")
        assert "lr 0.1 " in status(app) and "(loop" not in status(app)

    drive(app, body)


def test_header_counts_what_the_guard_did() -> None:
    from gradtui.model.events import GuardAction

    src = synthetic_source(layers=4, prefill=5)
    app = manual_app(src)

    async def body(app: GradTUIApp, pilot: Pilot[None]) -> None:
        assert "guard" not in status(app)  # a run without a guard has no chip
        assert app.store.run is not None
        app.store.run = dataclasses.replace(app.store.run, guard=True)
        app.refresh_views(force=True)
        await pilot.pause()
        assert "guard on" in status(app)
        app.ingest([GuardAction(5, "skip", "non-finite"), GuardAction(6, "skip", "non-finite")])
        app.ingest([GuardAction(6, "rollback", "rolled back to step 0"), GuardAction(6, "lr_cut", "lr 0.1 -> 0.025")])
        app.refresh_views(force=True)
        await pilot.pause()
        # Wide, the chip says what its glyphs count (was "guard ⟲1 ⤼2", explained nowhere).
        assert "guard ⟲1 rollback  ⤼2 skip" in status(app), status(app)

    drive(app, body)
