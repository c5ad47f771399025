"""'What to change' from where a run broke (`gradtui.model.origin_advice`)."""

from __future__ import annotations

import numpy as np

from gradtui.model.advice import RunFacts, suggestions
from gradtui.model.capture_summary import CaptureFold
from gradtui.model.events import CaptureStats, LayerInfo, NonFiniteOrigin, RunStart
from gradtui.model.origin_advice import collapsed_moments, origin_advice


def _origin(module: str, direction: str, kind: str, input_max: float) -> NonFiniteOrigin:
    return NonFiniteOrigin(152, module, 3 if module else None, direction, kind, input_max)


def test_an_overflow_going_forward_points_at_the_exp_or_the_growth() -> None:
    advice = origin_advice(_origin("h.3.attn", "forward", "inf", 3.4e38))
    assert advice["layers"] == ["h.3.attn"] and advice["first_step"] == 152
    assert "h.3.attn overflowed in the forward pass" in advice["cause"] and "3.4e+38" in advice["cause"]
    assert "logsumexp" in advice["cure"] and "learning rate" in advice["cure"]
    assert advice["origin"] == "first non-finite: h.3.attn forward output, step 152, Inf; its input max 3.4e+38"


def test_a_nan_from_moderate_input_is_an_op_outside_its_domain() -> None:
    advice = origin_advice(_origin("head", "forward", "nan", 2.5))
    assert "outside its domain" in advice["cause"] and "epsilon" in advice["cure"]


def test_the_loss_and_a_backward_origin_each_get_their_own_cure() -> None:
    loss = origin_advice(_origin("", "forward", "inf", 1.9e31))
    assert loss["layers"] == [] and "the loss itself" in loss["cause"] and "cross_entropy" in loss["cure"]
    back = origin_advice(_origin("2", "backward", "inf", 0.03))
    assert "the gradient 2 passed back went Inf first" in back["cause"] and "sqrt" in back["cure"]


def _capture(v2: list[list[float]]) -> CaptureFold:
    fold = CaptureFold(2)
    for step, row in enumerate(v2, start=10):
        nan = np.full(2, np.nan)
        fold.add(CaptureStats(step, nan, nan, np.zeros(2, np.int64), nan, nan, np.array(row)))
    return fold


def test_a_second_moment_that_collapses_is_named_with_its_cure() -> None:
    fold = _capture([[1e-2, 1e-2], [1e-3, 9e-3], [5e-6, 8e-3]])
    advice = collapsed_moments(fold.data(), ["enc", "dec"])
    assert advice is not None and advice["layers"] == ["enc"] and advice["first_step"] == 12
    assert "eps" in advice["cure"]
    assert collapsed_moments(_capture([[1e-2, 1e-2], [5e-3, 9e-3]]).data(), ["enc", "dec"]) is None


def test_the_run_advice_ends_with_where_it_broke() -> None:
    start = RunStart(
        run="r",
        pid=1,
        started=0.0,
        layers=(LayerInfo("enc", "Linear", 4), LayerInfo("dec", "Linear", 4)),
        lrs=(1e-3,),
        clip_mode="off",
        clip_threshold=0.0,
        every=1,
        detail_every=50,
        device="cpu",
    )
    fold = _capture([[1e-2, 1e-2], [1e-7, 1e-2]])
    origin = _origin("dec", "forward", "inf", 1e30)
    facts = RunFacts(start, [], np.zeros(0, np.int64), np.zeros(0), origins=[origin], capture=fold.data())
    got = [(s["kind"], s["layers"]) for s in suggestions(facts)]
    assert got == [("nonfinite", ["dec"]), ("second_moment", ["enc"])]
