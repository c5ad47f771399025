"""The detectors over a run watched in two tiers: run-wide values at every step (`update_run`),
per-layer statistics at sampled steps (`update`); persistence counts steps, not samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_detectors import NAMES, stats

from gradtui.model.detectors import DetectorConfig, Detectors
from gradtui.model.events import Alert


def run(det: Detectors, steps: int, stride: int, norms: np.ndarray, losses: np.ndarray) -> list[Alert]:
    """Every step to the detectors: sampled ones (step % stride == 0) whole, the others run-wide."""
    out: list[Alert] = []
    for step in range(steps):
        g = norms[step]
        glob = float(np.sqrt((g**2).sum())) if np.isfinite(g).all() else math.nan
        if step % stride == 0:
            out += det.update(stats(step, g, loss=float(losses[step]), global_norm=glob))
        else:
            out += det.update_run(step, float(losses[step]), glob)
    return out


def first(alerts: list[Alert], kind: str, layer: str | None = "any") -> int | None:
    return min(
        (a.step for a in alerts if a.active and a.kind == kind and (layer == "any" or a.layer == layer)), default=None
    )


def steady(steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    norms = np.array([0.5, 1.0, 2.0, 1.5]) * 10.0 ** (0.1 * rng.standard_normal((steps, 4)))
    losses = 2.0 * 10.0 ** (0.03 * rng.standard_normal(steps))
    return norms, losses


@pytest.mark.parametrize("stride", [1, 4, 8, 32])
def test_a_loss_spike_at_an_unsampled_step_is_flagged_at_that_step(stride: int) -> None:
    norms, losses = steady(200)
    losses[123] *= 1000.0  # one bad batch; 123 is sampled at none of these strides but 1
    alerts = run(Detectors(NAMES), 200, stride, norms, losses)
    spikes = [a for a in alerts if a.kind == "loss_spike" and a.active]
    assert [a.step for a in spikes] == [123]
    assert spikes[0].level == "warning" and spikes[0].layer is None
    assert spikes[0].value == pytest.approx(losses[123])


@pytest.mark.parametrize("stride", [4, 8, 32])
def test_a_global_norm_blow_up_between_samples_is_flagged_as_early_as_at_every_step(stride: int) -> None:
    norms, losses = steady(120)
    for step in range(90, 120):  # compounding 3x a step, loss rising with it
        norms[step] *= 3.0 ** (step - 89)
        losses[step] *= 1.5 ** (step - 89)
    every = first(run(Detectors(NAMES), 120, 1, norms, losses), "exploding", None)
    strided = first(run(Detectors(NAMES), 120, stride, norms, losses), "exploding", None)
    assert every is not None and 90 <= every <= 93
    assert strided == every


@pytest.mark.parametrize("stride", [1, 2, 4, 8, 16])
def test_dead_and_clear_count_steps_whatever_the_stride(stride: int) -> None:
    cfg = DetectorConfig(dead_steps=20, clear_steps=5)
    norms, losses = steady(200)
    norms[40:120, 2] = 0.0  # layer fc3 dead from step 40 to 119
    alerts = run(Detectors(NAMES, cfg), 200, stride, norms, losses)
    up = first(alerts, "dead", "fc3")
    down = min((a.step for a in alerts if a.kind == "dead" and not a.active and a.layer == "fc3"), default=None)
    # At every step: raised once dead for 20 steps (step 59), cleared after 5 live ones (step 124).
    # At a stride the flag waits for the first sample that completes the count: at most a stride later,
    # never earlier (a single sample does not stand for the steps around it).
    assert up is not None and 59 <= up < 59 + stride
    assert down is not None and 124 <= down < 124 + stride


def test_run_limits_screen_below_what_the_rules_flag() -> None:
    det = Detectors(NAMES)
    norms, losses = steady(60)
    run(det, 60, 1, norms, losses)
    limits = det.run_limits()
    glob = np.sqrt((norms**2).sum(axis=1))
    # Past the rules' history, a screen sits above the healthy values and below a 10x jump.
    assert glob.max() < limits.global_norm < 10 * np.median(glob[-32:])
    assert losses.max() < limits.loss < 2 * np.median(losses[-32:])
    assert (norms.max(axis=0) < limits.layers).all() and (limits.layers < 10 * np.median(norms[-32:], axis=0)).all()
    fresh = Detectors(NAMES).run_limits()
    ceiling = DetectorConfig().explode_ceiling
    assert (fresh.global_norm, fresh.loss) == (ceiling, math.inf) and (fresh.layers == ceiling).all()


def run_canaries(
    det: Detectors, steps: int, stride: int, norms: np.ndarray, losses: np.ndarray, canary: list[int]
) -> list[Alert]:
    """As `run`, but the unsampled steps measure only the `canary` layers (no global norm)."""
    layers = np.array(canary, np.int64)
    out: list[Alert] = []
    for step in range(steps):
        g = norms[step]
        if step % stride == 0:
            glob = float(np.sqrt((g**2).sum()))
            out += det.update(stats(step, g, loss=float(losses[step]), global_norm=glob))
        else:
            out += det.update_run(step, float(losses[step]), None, (layers, g[layers]))
    return out


@pytest.mark.parametrize("stride", [8, 32])
def test_a_canary_layer_blow_up_between_samples_is_flagged_at_its_step(stride: int) -> None:
    """A canary layer is judged on its every-step history: a jump at an unsampled step is flagged
    there, with the norm of that step, as at every step; a layer that is not a canary waits for a sample."""
    norms, losses = steady(120)
    for step in range(97, 120):  # fc1 (a canary) compounds 3x a step, the loss rising with it
        norms[step, 0] *= 3.0 ** (step - 96)
        losses[step] *= 1.5 ** (step - 96)
    every = [a for a in run(Detectors(NAMES), 120, 1, norms, losses) if a.active and a.kind == "exploding"]
    canary = [
        a
        for a in run_canaries(Detectors(NAMES), 120, stride, norms, losses, [0, 3])
        if a.active and a.kind == "exploding"
    ]
    first_every = min(a.step for a in every if a.layer == NAMES[0])
    hit = [a for a in canary if a.layer == NAMES[0]]
    assert 97 <= first_every <= 100 and 97 % stride and first_every % stride  # not a sampled step
    assert hit and hit[0].step == first_every
    assert hit[0].value == pytest.approx(norms[first_every, 0])
    # Without canaries the same layer waits for the next sample.
    late = first(run(Detectors(NAMES), 120, stride, norms, losses), "exploding", NAMES[0])
    assert late is None or late > first_every


def test_canary_limits_follow_their_every_step_history() -> None:
    det = Detectors(NAMES)
    norms, losses = steady(64)
    run_canaries(det, 64, 32, norms, losses, [0, 3])
    limits = det.run_limits()
    # The canaries' screens sit above their healthy values and below a 10x jump; the global norm,
    # seen at two samples only, keeps its wide screen.
    assert (norms[:, [0, 3]].max(axis=0) < limits.layers[[0, 3]]).all()
    assert (limits.layers[[0, 3]] < 10 * np.median(norms[:, [0, 3]], axis=0)).all()


def test_canary_layers_that_are_not_the_runs_are_refused() -> None:
    det = Detectors(NAMES)
    with pytest.raises(ValueError, match="canary layers"):
        det.update_run(0, 1.0, None, (np.array([0, len(NAMES)]), np.ones(2)))


def _facts(alerts: list[Alert], shift: int = 0) -> list[tuple[object, ...]]:
    return [(a.step - shift, a.layer, a.kind, a.active, a.level, a.value, a.threshold) for a in alerts]


def test_a_rollback_restores_the_history_and_each_kept_state_can_be_restored_again() -> None:
    """The guard rolls a run back twice to one snapshot: each time the detectors go back to the state
    they kept before the blow-up, so each relapse is judged as a fresh detector fed the healthy steps
    would judge it (the same alerts, `shift` steps later), not against the blow-up's own norms."""
    from gradtui.model.detectors import KEEP_STEPS

    norms, losses = steady(160, seed=3)
    for step in range(112, 160):  # every layer compounds 3x a step, the loss with it
        norms[step] *= 3.0 ** (step - 111)
        losses[step] *= 1.5 ** (step - 111)
    keep = 7 * KEEP_STEPS  # 112: a kept copy of the state before this step, as the guard's snapshot
    blowup = range(keep, keep + 12)

    reference = Detectors(NAMES)
    run(reference, keep, 4, norms, losses)
    expected = _facts(run_steps(reference, blowup, 4, norms, losses))
    assert any(f[2] == "exploding" and f[3] for f in expected)

    det = Detectors(NAMES)
    run(det, keep, 4, norms, losses)
    at = keep
    for _ in range(3):  # the second and third relapse start from the one state kept at `keep`
        got = run_steps(det, blowup, 4, norms, losses, shift=at - keep)
        assert _facts(got, shift=at - keep) == expected
        at += len(blowup)
        cleared = det.rolled_back(keep, at)
        assert cleared and all(not a.active and a.step == at for a in cleared)
        assert {(a.layer, a.kind) for a in cleared} == {(a.layer, a.kind) for a in got if a.active}


def run_steps(
    det: Detectors, steps: range, stride: int, norms: np.ndarray, losses: np.ndarray, shift: int = 0
) -> list[Alert]:
    """As `run`, over `steps` of the arrays only, fed as steps `shift` later."""
    out: list[Alert] = []
    for step in steps:
        g = norms[step]
        glob = float(np.sqrt((g**2).sum()))
        if step % stride == 0:
            out += det.update(stats(step + shift, g, loss=float(losses[step]), global_norm=glob))
        else:
            out += det.update_run(step + shift, float(losses[step]), glob)
    return out
