"""The report's advice: causes and cures drawn from the run's own numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradtui.model.advice import RunFacts, clip_preview, suggestions, zclip_preview
from gradtui.model.events import Alert, LayerInfo, RunStart
from gradtui.probe.clip import ZClip


def start(**extra: object) -> RunStart:
    layers = (LayerInfo("0", "Linear", 64 * 32 + 32), LayerInfo("2", "Linear", 32 * 2 + 2))
    return RunStart("r", 1, 0.0, layers, (0.1,), "off", 1.0, 1, 1, "cpu", **extra)  # type: ignore[arg-type]


def alert(step: int, kind: str, layer: str | None = None, level: str = "critical") -> Alert:
    return Alert(step, layer, kind, True, 1.0, 1.0, level=level)


def test_a_blowup_gets_a_clip_threshold_from_its_healthy_norms_and_a_cut_from_its_growth() -> None:
    rng = np.random.default_rng(0)
    healthy = rng.uniform(1.0, 2.0, 40)
    blowup = 2.0 * 3.0 ** np.arange(1, 9)  # x3 per step from step 40
    norms = np.concatenate([healthy, blowup, [np.nan]])
    steps = np.arange(norms.size)
    facts = RunFacts(start(), [alert(40, "exploding")], steps, norms)
    (advice,) = suggestions(facts)
    threshold = float(f"{np.percentile(healthy, 95):.2g}")
    assert advice["clip"] == {
        "threshold": threshold,
        "would_clip": int((norms[:48] > threshold).sum()),  # up to the first NaN, at step 48
        "of_steps": 48,
        "healthy_clipped": int((healthy > threshold).sum()),
    }
    assert advice["lr_factor"] == 0.5  # 2 / (1 + 3)
    assert "grew x3 per step from step 40" in advice["cause"]
    assert "guard=True" in advice["cure"]


def test_warnings_and_info_alarms_get_no_advice_and_a_fast_growth_a_deeper_cut() -> None:
    norms = np.concatenate([np.ones(10), 9.0 ** np.arange(1, 6)])
    facts = RunFacts(
        start(),
        [alert(10, "exploding"), alert(3, "dead", "0", "warning"), alert(4, "loss_spike", level="info")],
        np.arange(15),
        norms,
    )
    kinds = [a["kind"] for a in suggestions(facts)]
    assert kinds == ["exploding", "dead"]
    assert suggestions(facts)[0]["lr_factor"] == 0.2  # 2 / (1 + 9)


def test_vanishing_names_the_saturating_activation_the_init_and_the_tours_cures() -> None:
    facts = RunFacts(
        start(activations=("Sigmoid",), fan_in=(64, 32), fan_out=(32, 2)),
        [alert(9, "vanishing", "0", "warning")],
        np.arange(3),
        np.ones(3),
        weight_norm=np.array([0.05 * np.sqrt(64 * 32 + 32), 1.0]),
    )
    (advice,) = suggestions(facts)
    glorot = np.sqrt(2 / (64 + 32))
    assert "Sigmoid" in advice["cause"] and f"below Glorot's {glorot:.2g}" in advice["cause"]
    assert "sigmoid-relu-he" in advice["cure"] and "sigmoid-glorot" in advice["cure"]


def test_the_previews_count_what_each_rule_would_have_clipped() -> None:
    rng = np.random.default_rng(1)
    norms = rng.uniform(1.0, 1.2, 60)
    norms[[30, 45]] = [30.0, 8.0]
    assert clip_preview(norms, 5.0) == 2
    # The preview of adaptive clipping counts the steps the probe's own ZClip clips.
    z, clipped = ZClip(), 0
    for g in norms:
        coef = z.coefficient(torch.tensor(g, dtype=torch.float64), 2.5)
        clipped += float(coef) < 1.0
    assert zclip_preview(norms) == clipped
    assert clipped >= 2


@pytest.mark.parametrize("kind", ["nonfinite", "loss_spike"])
def test_every_kind_has_a_cause_and_a_cure(kind: str) -> None:
    facts = RunFacts(
        start(),
        [alert(5, kind, "0" if kind == "nonfinite" else None)],
        np.arange(3),
        np.ones(3),
        bad_batches=[{"step": 5, "why": "loss_spike", "batch": "3,17"}],
    )
    (advice,) = suggestions(facts)
    assert advice["cause"] and advice["cure"]
    if kind == "loss_spike":
        assert "step 5: 3,17" in advice["cause"]
