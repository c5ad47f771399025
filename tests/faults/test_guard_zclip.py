"""Issue 28, item 8: adaptive clipping never reaches a threshold of 0. Zero-gradient steps (a
loss weight warmed up from 0, a frozen phase) stay out of its statistics, and its standard
deviation has a floor, so a run of equal norms cannot pin the threshold either."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradtui
from gradtui import Guard
from gradtui.probe.clip import ZClip

ZERO_STEPS = 30
"""Steps whose loss weight is 0 (more than the warm-up's 25)."""
WARMUP = 25
"""Norms adaptive clipping only learns from (`gradtui.model.guard.ZCLIP_WARMUP`)."""


def run(watched: bool, steps: int = ZERO_STEPS + 40) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = gradtui.watch(model, opt, serve=False, every=1, guard=Guard(clip=True)) if watched else None
    for it in range(steps):
        g = torch.Generator().manual_seed(it)
        x, y = torch.randn(32, 6, generator=g), torch.randn(32, 1, generator=g)
        weight = 0.0 if it < ZERO_STEPS else 1.0  # an auxiliary loss switched on after a frozen phase
        loss = weight * nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        if mon is not None:
            mon.step(loss)
        opt.step()
    if mon is not None:
        mon.close()
    return model


def test_zero_gradient_steps_leave_adaptive_clipping_warming_up_and_training_goes_on() -> None:
    # The first 25 steps with a gradient only build the statistics (no clipping): the run is plain
    # SGD's, bit for bit. Before, the zero steps had made the threshold 0 and the weights froze.
    torch.manual_seed(0)
    start = [p.detach().clone() for p in run(False, steps=0).parameters()]
    warm = ZERO_STEPS + WARMUP
    guarded, plain = run(True, steps=warm), run(False, steps=warm)
    for a, b, s in zip(guarded.parameters(), plain.parameters(), start, strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, s), "the weights moved"
    later = run(True)
    assert (later[0].weight - guarded[0].weight).abs().max() > 1e-3  # and they go on moving


def test_after_a_run_of_equal_norms_the_threshold_follows_a_lasting_rise() -> None:
    clip = ZClip()
    for _ in range(100):
        clip.coefficient(torch.tensor(1.0, dtype=torch.float64), 2.5)
    applied = [float(2.0 * clip.coefficient(torch.tensor(2.0, dtype=torch.float64), 2.5)) for _ in range(200)]
    # The floor: mean * (1 + 2.5 * 0.05); with none the threshold was the mean, 1.0, for good.
    assert applied[0] == pytest.approx(1.125, rel=1e-5)
    assert applied[-1] == 2.0, "the norms doubled for good: clipping lets them through in the end"
    # The host rule (the viewer's preview) says the same, step by step.
    from gradtui.model.guard import ZClipStats, zclip_step

    stats = ZClipStats()
    for _ in range(100):
        _, stats = zclip_step(stats, 1.0, 2.5)
    host = []
    for _ in range(200):
        coef, stats = zclip_step(stats, 2.0, 2.5)
        host.append(2.0 * coef)
    assert host == pytest.approx(applied, rel=1e-12)
    assert clip.seen == stats.seen == 300
