"""Which letters each chart's axis carries for interventions and guard actions."""

from __future__ import annotations

from gradtui.model.events import CommandResult, GuardAction
from gradtui.model.store import RunStore
from gradtui.ui.renderables.chart import LR_MARKERS
from gradtui.ui.widgets.charts import chart_markers


def _store() -> RunStore:
    store = RunStore()
    store.apply(CommandResult("a", "set_clip", True, 3, "clip norm <= 1"))
    # A rollback and its LR cut land at the same step, as the guard emits them.
    store.apply(GuardAction(9, "rollback", "rolled back to step 0, lr 0.02 -> 0.005"))
    store.apply(GuardAction(9, "lr_cut", "lr 0.02 -> 0.005 (x0.25, cut 1)"))
    store.apply(GuardAction(12, "skip", "non-finite loss or gradients"))
    return store


def test_loss_chart_marks_a_rollback_R_not_a_clash_of_R_and_L() -> None:
    marks = [(m.step, m.glyph) for m in chart_markers(_store(), None)]
    assert marks == [(3, "C"), (9, "R"), (12, "S")]


def test_lr_chart_marks_only_what_changed_the_learning_rate() -> None:
    marks = [(m.step, m.glyph) for m in chart_markers(_store(), LR_MARKERS)]
    assert marks == [(9, "L")]
