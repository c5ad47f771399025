"""The norm the optimizer stepped with: the loop's own clipping after `mon.step`, measured from the
optimizer's post-step hook, against torch's own norm of what the optimizer was handed. Default
settings (the budget picks the sampled steps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from torch import nn

import gradtui
from gradtui.model.events import StepStats
from gradtui.probe.stepped import host_sq


def handed_norm(model: nn.Module) -> float:
    """torch's own global norm of the gradients the optimizer is about to be handed."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def closed_steps(mon: gradtui.Monitor) -> list[StepStats]:
    mon.close()
    assert mon.events is not None
    return [e for e in mon.events.drain() if isinstance(e, StepStats)]


def test_a_loops_clipping_after_mon_step_is_the_stepped_norm_and_no_clipping_is_exactly_one() -> None:
    torch.manual_seed(0)
    x, y = make_classification(256, 20, random_state=0)
    xs, ys = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = gradtui.watch(model, opt, queue=True)
    handed: dict[int, float] = {}
    clipped: set[int] = set()
    for it in range(120):
        loss = nn.functional.cross_entropy(model(xs), ys)
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        if it % 3 == 0:  # the loop clips some steps hard, leaves the others alone
            nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            clipped.add(it)
        handed[it] = handed_norm(model)
        opt.step()
    steps = closed_steps(mon)
    assert len({s.step for s in steps} & clipped) >= 3 and len({s.step for s in steps} - clipped) >= 3
    for s in steps:
        assert s.stepped_norm == pytest.approx(handed[s.step], rel=1e-5), s.step
        if s.step not in clipped:
            # Both ends of the factor are measured the same way: an untouched gradient gives exactly 1.
            assert s.stepped_norm == s.clipped_norm, s.step
        else:
            assert s.stepped_norm < 1.01e-3 < s.global_norm


def test_host_squared_norms_of_finite_values_past_float32s_square_stay_finite() -> None:
    """Values of 1e20 are finite in float32, their squares are not: the sum is taken again in float64."""
    big = torch.full((64,), 1e20, dtype=torch.float32)
    small = torch.arange(1.0, 11.0, dtype=torch.float32)
    got = host_sq([big.numpy(), small.numpy()])
    want = float(torch.linalg.vector_norm(big.double()) ** 2 + torch.linalg.vector_norm(small.double()) ** 2)
    assert np.isfinite(got) and got == pytest.approx(want, rel=1e-6)


class Transposed(nn.Module):
    """Its smallest parameters (those the hook re-measures) are laid out transposed, as their
    gradients are: no flat view of them exists, only a copy."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(20, 64)
        self.heads = nn.ParameterList([nn.Parameter(torch.randn(64, 2).t()) for _ in range(3)])  # strides (1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.body(x))
        return sum(h @ w.t() for w in self.heads)  # type: ignore[return-value]


def test_the_loops_clipping_is_seen_on_gradients_laid_out_transposed() -> None:
    torch.manual_seed(0)
    x, y = make_classification(128, 20, random_state=1)
    xs, ys = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = Transposed()
    assert all(not w.is_contiguous() for w in model.heads)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gradtui.watch(model, opt, queue=True, every=1)
    handed: dict[int, float] = {}
    for it in range(12):
        loss = nn.functional.cross_entropy(model(xs), ys)
        opt.zero_grad()
        loss.backward()
        assert not model.heads[0].grad.is_contiguous()
        mon.step(loss)
        nn.utils.clip_grad_norm_(model.parameters(), 1e-3)  # in place, after mon.step
        handed[it] = handed_norm(model)
        opt.step()
    steps = closed_steps(mon)
    assert len(steps) == 12
    for s in steps:
        assert s.stepped_norm == pytest.approx(handed[s.step], rel=1e-5), s.step
