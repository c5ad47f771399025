"""A record made while the probe summed norms in float32 (issue 29): at nanoGPT's steps 16-18 every
gradient value was finite but the norm overflowed (inf, no value counted non-finite); the first
NaN came at step 19. The report calls the first an overflow of the norm, with the bound it gives,
and the first non-finite step 19."""

from __future__ import annotations

import math

import numpy as np

from gradtui.model.events import OVERFLOW_NORM, Event, LayerInfo, RunStart, StepStats
from gradtui.model.report import summarize

INF, NAN = math.inf, math.nan
NAMES = ("transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc")


def _step(step: int, norms: list[float], nonfinite: list[int]) -> StepStats:
    g = np.asarray(norms, np.float64)
    total = float(np.sqrt(np.sum(g * g)))
    return StepStats(
        step=step, time=float(step), loss=2.0, lrs=(6e-4,), grad_norm=g, has_grad=np.ones(2, bool),
        nonfinite=np.asarray(nonfinite, np.int64), global_norm=total, clipped_norm=total, clip_factor=1.0,
        clip_mode="off", clip_threshold=1.0, steps_per_sec=10.0,
    )  # fmt: skip


def _events() -> list[Event]:
    layers = tuple(LayerInfo(n, "Linear", 100) for n in NAMES)
    start = RunStart("gpt", 1, 0.0, layers, (6e-4,), "off", 1.0, 1, 1, "cuda")
    events: list[Event] = [start, *(_step(s, [1.0, 0.5], [0, 0]) for s in range(16))]
    events += [_step(s, [INF, 3e18], [0, 0]) for s in range(16, 19)]  # overflowed: values finite
    events += [_step(19, [NAN, NAN], [12, 40])]
    return events


def test_an_overflowed_norm_over_finite_values_is_an_overflow_not_a_nan() -> None:
    out = summarize(_events())
    assert out["first_nonfinite_step"] == 19
    assert out["first_nonfinite_layers"] == list(NAMES)
    nonfinite = [a for a in out["alerts"] if a["kind"] == "nonfinite"]
    assert nonfinite and min(a["step"] for a in nonfinite) == 19
    overflow = [a for a in out["alerts"] if a["kind"] == "exploding" and a["step"] == 16]
    by_layer = {a["layer"]: a for a in overflow}
    for layer in (NAMES[0], None):  # the layer that overflowed, and the run's norm
        assert by_layer[layer]["value"] == OVERFLOW_NORM and by_layer[layer]["level"] == "critical"
    assert by_layer[NAMES[1]]["value"] == 3e18  # the finite one keeps its own
    (advice,) = [a for a in out["suggestions"] if a["kind"] == "nonfinite"]
    assert "first appeared at step 19" in advice["cause"]


def test_the_alert_says_overflow_and_the_bound() -> None:
    from gradtui.model.detectors import Detectors

    det = Detectors(list(NAMES))
    alerts = [a for e in _events()[1:] if isinstance(e, StepStats) for a in det.update(e) if a.step == 16]
    messages = {a.layer: a.message for a in alerts if a.kind == "exploding"}
    for layer in (NAMES[0], None):
        assert "overflowed float32: ‖g‖ ≥ 1.8e+19" in messages[layer], messages
        assert "every gradient value finite" in messages[layer]
    assert not any(a.kind == "nonfinite" for a in alerts)
