"""A viewer follows the acknowledgements of commands it did not send (`controls.heard`), read
from the words the one command rule writes (`gradtui.model.commands.respond`)."""

from __future__ import annotations

import pytest
from ui_helpers import run_start, step_stats, store_of

from gradtui.model.commands import Command, ControlState, Release, SetClip, SetLR, SetPaused, respond
from gradtui.model.events import CommandResult
from gradtui.ui.controls import Controls, heard, result_words

ONE = ControlState(lrs=(0.1,), schedule_lrs=(0.1,), loop_clip=("norm", 1.0), clip_mode="value", clip_threshold=0.5)
TWO = ControlState(lrs=(0.1, 0.02), schedule_lrs=(0.1, 0.02))


@pytest.mark.parametrize(
    ("state", "cmd"),
    [
        (ONE, SetPaused(True)),
        (ONE, SetPaused(False)),
        (ONE, SetClip("norm", 0.25)),
        (ONE, SetClip("off")),
        (ONE, SetClip("auto", 3.0)),
        (ONE, SetLR(factor=0.5)),
        (ONE, SetLR(value=3e-4)),
        (ONE, Release("all")),
        (ONE, Release("lr")),
        (ONE, Release("clip")),
        (TWO, SetLR(factor=2.0)),
    ],
    ids=repr,
)
def test_the_rules_answer_tells_the_state_it_leaves(state: ControlState, cmd: Command) -> None:
    new, result = respond(state, cmd, step=7)
    got = heard(state, result)
    assert got is not None, result.message
    assert (got.paused, got.clip_mode, got.clip_threshold) == (new.paused, new.clip_mode, new.clip_threshold)
    assert got.lrs == pytest.approx(new.lrs, rel=1e-3)  # the answer gives 4 significant digits


def test_answers_that_do_not_say_enough_wait_for_the_step_report() -> None:
    _, some = respond(TWO, SetLR(value=0.1), step=7)  # group 0 unchanged: the answer names group 1 only
    assert heard(TWO, some) is None
    assert heard(ONE, CommandResult("x", "set_paused", True, 7, "something new")) is None
    assert heard(ONE, CommandResult("x", "rollback", True, 7, "rolled back to step 3")) is None


def test_a_pause_from_elsewhere_is_followed_and_p_then_resumes() -> None:
    controls = Controls(store_of([run_start(2), step_stats(0, [1.0, 1.0])]))
    assert controls.toggle_pause().paused is True
    controls.acknowledge(CommandResult("another-viewer", "set_paused", True, 1, "paused"))
    assert controls.actual().paused and not controls.holds_pause()
    assert controls.toggle_pause().paused is False
    # The lease running out resumes it, with a reason after the word.
    resumed = CommandResult("lease", "set_paused", True, 1, "resumed: viewer #3 paused the run and left 60 s ago")
    controls.acknowledge(resumed)
    assert not controls.actual().paused
    assert result_words(resumed) == "resume"
    assert result_words(CommandResult("x", "set_lr", True, 1, "lr 0.1 -> 0.05 (all groups)")) == "lr"
