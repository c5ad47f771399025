"""An overflow is not a NaN (issue 29): gradients whose values are all finite but whose float32 sum
of squares passes 3.4e38 (values near 1e19) have a finite norm on the record, an exploding alarm,
and no non-finite step; the first non-finite step is the first with non-finite values."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

import gradtui
from gradtui.model.events import RunSteps, StepStats
from gradtui.model.report import summarize

HUGE = range(16, 19)
NAN_AT = 19


def test_a_float32_norm_overflow_over_finite_gradients_is_no_nan() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 64), torch.randn(128, 1)
    mon = gradtui.watch(model, opt, queue=True)  # the defaults: the budget picks the sampled steps
    reference: dict[int, float] = {}
    for it in range(24):
        loss = ((model(x) - y) ** 2).mean()
        if it in HUGE:
            loss = loss * 1e21  # a loss scale gone wrong: gradients near 1e19, every one finite
        elif it == NAN_AT:
            loss = loss * math.nan
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if it in HUGE:
            assert all(bool(torch.isfinite(g).all()) for g in grads)
            assert math.isinf(float(torch.nn.utils.get_total_norm(grads)))  # torch's own float32 norm overflows
        reference[it] = float(torch.linalg.vector_norm(torch.cat([g.reshape(-1).double() for g in grads])))
        mon.step(loss)
        if it not in HUGE and it != NAN_AT:
            opt.step()
    mon.close()
    assert mon.events is not None
    events = list(mon.events.drain())
    norms: dict[int, float] = {}
    for e in events:
        if isinstance(e, StepStats):
            norms[e.step] = e.global_norm
        elif isinstance(e, RunSteps) and e.global_norm is not None:
            norms.update(zip(e.steps.tolist(), e.global_norm.tolist(), strict=True))
    for it in HUGE:
        assert reference[it] > 1.8e19
        assert np.isclose(norms[it], reference[it], rtol=1e-5), (it, norms[it], reference[it])
    out = summarize(events)
    assert out["first_nonfinite_step"] == NAN_AT
    nonfinite = [a["step"] for a in out["alerts"] if a["kind"] == "nonfinite"]
    assert nonfinite and min(nonfinite) == NAN_AT
    assert any(a["kind"] == "exploding" and a["step"] in HUGE for a in out["alerts"])
    (advice,) = [a for a in out["suggestions"] if a["kind"] == "nonfinite"]
    # The loop made the loss NaN at NAN_AT: the re-run of that step names the loss as where it broke.
    assert f"step {NAN_AT}" in advice["cause"] and "the loss itself" in advice["cause"], advice["cause"]
    assert advice["first_step"] == NAN_AT and advice["origin"].startswith("first non-finite: the loss")
