"""Paced timer ticks: when drawing is slow the heatmap and the panels take turns; nothing is lost."""

from __future__ import annotations

import asyncio

from ui_helpers import manual_app, synthetic_source

from gradtui.model.events import Alert, CommandResult
from gradtui.ui.pacing import Pacer


def test_the_views_take_turns_only_on_slow_paced_ticks() -> None:
    pacer = Pacer(budget_s=0.004)
    assert pacer.due(changed=True, paced=True) == {"heatmap", "panels"}  # nothing measured yet: cheap
    pacer.cost.update(heatmap=0.003, panels=0.002)
    assert pacer.due(changed=True, paced=True) == {"heatmap"}
    # No new data: the view left over is drawn on the next tick, then nothing.
    assert pacer.due(changed=False, paced=True) == {"panels"}
    assert pacer.due(changed=False, paced=True) == set()
    # Turns alternate from tick to tick: this time the panels go first.
    assert pacer.due(changed=True, paced=True) == {"panels"}
    assert pacer.stale == {"heatmap"}
    # A call that is not a timer tick draws everything that is stale at once.
    assert pacer.due(changed=True, paced=False) == {"heatmap", "panels"}
    pacer.cost.update(heatmap=0.001, panels=0.001)
    assert pacer.due(changed=True, paced=True) == {"heatmap", "panels"}


def _alert(step: int) -> Alert:
    return Alert(step, "fc0", "exploding", True, 500.0, 50.0)


def test_a_slow_app_logs_alerts_one_tick_later_in_order_and_a_key_draws_all_at_once() -> None:
    async def main() -> None:
        source = synthetic_source("healthy", 4, prefill=30, steps_per_poll=0)
        app = manual_app(source)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause()
            app._pacer.budget_s = 0.0  # every redraw is "slow"
            app._pacer.cost.update(heatmap=1.0, panels=1.0)
            log = app.alert_log
            before = log.count
            turn = app._pacer.due(changed=False, paced=True)  # settle whose turn it is
            assert turn == set()
            source.feed([_alert(31)])
            app.poll_source(paced=True)
            after_one = (log.count - before, app.heatmap._data_version == app.store.version)
            # The first tick drew one of the two: the heatmap or the log (and the charts), not both.
            assert after_one in ((0, True), (1, False))
            app.poll_source(paced=True)
            assert log.count - before == 1, "the alert was lost"
            assert app.heatmap._data_version == app.store.version
            # An alert followed by an acknowledgement in one batch keeps its place before it.
            source.feed([_alert(32), CommandResult("c1", "set_lr", True, 32, "lr 0.1 -> 0.05")])
            app.poll_source(paced=True)
            lines = log.plain_lines
            alert_at = max(i for i, line in enumerate(lines) if "step 32 ▲ exploding" in line)
            result_at = max(i for i, line in enumerate(lines) if "lr 0.1 -> 0.05" in line)
            assert alert_at < result_at
            # A poll that is not a timer tick (a key, a test) draws everything at once.
            source.feed([_alert(33)])
            app.poll_source()
            assert any("step 33 ▲ exploding" in line for line in log.plain_lines)
            assert app.heatmap._data_version == app.store.version

    asyncio.run(main())
