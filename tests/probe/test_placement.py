"""The "clipped already" warning: said when mon.step sees a loop's clipping (a steady global norm
over gradients that move), never for a run whose gradients are steady because it has converged
or steps too little to change them. Default settings throughout (the budget picks the samples)."""

from __future__ import annotations

import torch
from sklearn.datasets import make_classification, make_regression
from torch import nn

import gradtui
from gradtui.model.events import LogLine, StepStats

CLIPPED = "look clipped already"


def _warned(mon: gradtui.Monitor) -> tuple[list[str], list[StepStats]]:
    mon.close()
    assert mon.events is not None
    events = mon.events.drain()
    logs = [e.text for e in events if isinstance(e, LogLine) and CLIPPED in e.text]
    return logs, [e for e in events if isinstance(e, StepStats)]


def _steady(steps: list[StepStats]) -> bool:
    """Three samples in a row whose global norms agree to 1e-6: what the old rule warned on."""
    norms = [s.global_norm for s in steps]
    return any(
        all(abs(norms[i + k] - norms[i]) <= 1e-6 * norms[i] for k in (1, 2)) and norms[i] > 0
        for i in range(len(norms) - 2)
    )


def test_lbfgs_at_its_minimum_is_not_taken_for_clipping() -> None:
    torch.manual_seed(0)
    x, y = make_regression(256, 8, noise=5.0, random_state=0)
    xs, ys = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1))
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=20, line_search_fn="strong_wolfe")
    mon = gradtui.watch(model, opt, queue=True)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((model(xs) - ys) ** 2).mean()
        loss.backward()
        mon.step(loss)
        return loss

    for _ in range(15):
        opt.step(closure)
    logs, steps = _warned(mon)
    assert _steady(steps), "the run must reach a steady norm, or the test shows nothing"
    assert logs == []


def test_sgd_at_a_small_rate_on_a_fixed_batch_is_not_taken_for_clipping() -> None:
    """SGD at lr 1e-3 on one batch, its loss weighted 1e-5 (an auxiliary loss's weight): each step
    moves the gradients by about 1e-8 of their size, so samples agree to 1e-6 (what the old rule
    read as clipping)."""
    torch.manual_seed(0)
    x, y = make_classification(256, 20, random_state=0)
    xs, ys = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    mon = gradtui.watch(model, opt, queue=True)
    for _ in range(200):
        loss = 1e-5 * nn.functional.cross_entropy(model(xs), ys)
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        opt.step()
    logs, steps = _warned(mon)
    assert _steady(steps), "the run must reach a steady norm, or the test shows nothing"
    assert logs == []


def test_a_loop_that_clips_before_mon_step_is_still_told() -> None:
    torch.manual_seed(0)
    x, y = make_classification(2048, 20, random_state=0)
    xs, ys = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = gradtui.watch(model, opt, queue=True)
    raw = []
    for it in range(200):
        batch = slice(32 * (it % 64), 32 * (it % 64 + 1))
        loss = nn.functional.cross_entropy(model(xs[batch]), ys[batch])
        opt.zero_grad()
        loss.backward()
        raw.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)))
        mon.step(loss)  # too late: it sees what the loop's clipping left
        opt.step()
    logs, steps = _warned(mon)
    assert min(raw) > 0.05, "every step must have been clipped"
    assert len(logs) == 1
