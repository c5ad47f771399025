"""On CUDA the probe never makes the training thread wait for the GPU: no synchronising call
comes from gradtui's code in `mon.step` or in its optimizer hooks (skipped without CUDA)."""

from __future__ import annotations

import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pytest
import torch
from torch import nn

import gradtui
from gradtui.model.events import RunSteps, StepStats

pytestmark = pytest.mark.gpu

GRADTUI_DIR = Path(gradtui.__file__).resolve().parent
STEPS = 6


@contextmanager
def syncs_recorded() -> Iterator[list[traceback.StackSummary]]:
    """The Python stack of every synchronising CUDA call this thread makes in the block.

    torch's sync debug mode turns each such call into a warning raised while the call
    returns, so the stack at that moment names the code that made it.
    """
    found: list[traceback.StackSummary] = []
    me = threading.get_ident()

    def show(
        message: Warning | str, category: type[Warning], filename: str, lineno: int,
        file: TextIO | None = None, line: str | None = None,
    ) -> None:
        if "synchronizing" in str(message) and threading.get_ident() == me:
            found.append(traceback.extract_stack())

    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the same call site must warn every time, not once
        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")


def from_gradtui(stack: traceback.StackSummary) -> bool:
    return any(Path(frame.filename).resolve().is_relative_to(GRADTUI_DIR) for frame in stack)


def test_the_recorder_sees_a_sync_and_who_made_it() -> None:
    x = torch.ones(3, device="cuda")
    with syncs_recorded() as found:
        x.sum().item()
    assert found, "torch's sync debug mode reported nothing: this test cannot see a sync"
    for stack in found:
        assert any(frame.name == "test_the_recorder_sees_a_sync_and_who_made_it" for frame in stack)
        assert not from_gradtui(stack)


def small_model() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4)).cuda()


def fp32_loop(mon: gradtui.Monitor, model: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], None]:
    x, y = torch.randn(64, 32, device="cuda"), torch.randint(0, 4, (64,), device="cuda")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss)
        opt.step()

    return step


def amp_loop(mon: gradtui.Monitor, model: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], None]:
    x, y = torch.randn(64, 32, device="cuda"), torch.randint(0, 4, (64,), device="cuda")
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**8)  # no overflow, so no skipped step

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        mon.step(loss, scaler=scaler)
        scaler.unscale_(opt)  # the loop's own recipe after mon.step (the stepped norm measures it)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)  # reads found_inf to the host itself: a sync of torch's, not gradtui's
        scaler.update()

    return step


@pytest.mark.parametrize(
    ("loop", "make_opt", "options"),
    [
        (fp32_loop, lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
         {"clip": ("norm", 0.5), "detail_every": 1}),
        (amp_loop, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3), {"detail_every": 2}),
    ],
    ids=["fp32-clip-detail-every-step", "fp16-gradscaler-adamw"],
)
def test_no_host_sync_from_the_probe(
    loop: Callable[[gradtui.Monitor, nn.Module, torch.optim.Optimizer], Callable[[], None]],
    make_opt: Callable[[nn.Module], torch.optim.Optimizer],
    options: dict[str, Any],
    tmp_path: Path,
) -> None:
    model = small_model()
    opt = make_opt(model)
    mon = gradtui.watch(model, opt, record=tmp_path / "run.gtr", queue=True, serve=False, **options)
    step = loop(mon, model, opt)
    # One step first: it builds what is cached once per run (index tensors, histogram columns).
    step()
    with syncs_recorded() as found:
        for i in range(1, STEPS):
            if i == 3:
                mon.send(gradtui.SetLR(factor=0.5))  # a command applied at a step boundary
            step()
    mon.close()
    ours = ["".join(stack.format()) for stack in found if from_gradtui(stack)]
    assert not ours, "synchronising CUDA calls from gradtui:\n" + "\n".join(ours)
    assert mon.events is not None
    stats = [e for e in mon.events.drain() if isinstance(e, StepStats)]
    assert [s.step for s in stats] == list(range(STEPS))  # every step was measured and published
    assert all(np.isfinite(s.grad_norm).all() for s in stats)
    assert any(s.grad_hist is not None for s in stats[1:])  # detail steps ran inside the recorder


@pytest.mark.parametrize("options", [{"every": 3}, {"budget": 0.5}], ids=["every-3", "budget"])
def test_no_host_sync_from_the_run_wide_tier(options: dict[str, Any]) -> None:
    """Unsampled steps still send their loss and global norm: a deferred copy, never a sync."""
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = gradtui.watch(model, opt, queue=True, serve=False, guard=False, **options)
    x, y = torch.randn(64, 32, device="cuda"), torch.randint(0, 4, (64,), device="cuda")
    losses: list[torch.Tensor] = []
    norms: list[torch.Tensor] = []

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        mon.step(loss)
        # The reference, kept on the device and read after the recorder: torch's own global norm.
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])))
        losses.append(loss.detach())
        opt.step()

    step()
    with syncs_recorded() as found:
        for _ in range(1, 3 * STEPS):
            step()
    mon.close()
    ours = ["".join(stack.format()) for stack in found if from_gradtui(stack)]
    assert not ours, "synchronising CUDA calls from gradtui:\n" + "\n".join(ours)
    assert mon.events is not None
    seen: dict[int, tuple[float, float]] = {}
    for event in mon.events.drain():
        if isinstance(event, StepStats):
            seen[event.step] = (event.loss, event.global_norm)
        elif isinstance(event, RunSteps):
            for s, lo, g in zip(event.steps.tolist(), event.loss.tolist(), event.global_norm.tolist(), strict=True):
                seen[s] = (lo, g)
    assert sorted(seen) == list(range(3 * STEPS))  # every step once, sampled or not
    got = np.array([seen[s] for s in range(3 * STEPS)])
    want = np.array([[lo.item(), g.item()] for lo, g in zip(losses, norms, strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_no_host_sync_during_a_deep_capture() -> None:
    """A capture's hooks (activation sums, finiteness flags, optimizer moments) stay on the device:
    its statistics and the first non-finite module arrive with the step's deferred copy."""
    from gradtui.model.events import CaptureStats, NonFiniteOrigin

    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    mon = gradtui.watch(model, opt, queue=True, serve=False)
    step = fp32_loop(mon, model, opt)
    outputs: dict[int, torch.Tensor] = {}
    model[2].register_forward_hook(lambda m, a, out: outputs.__setitem__(len(outputs), out.detach().clone()))
    step()
    mon.capture(steps=STEPS)
    with syncs_recorded() as found:
        for i in range(1, STEPS):
            if i == STEPS - 2:
                with torch.no_grad():
                    model[2].weight[0, 0] = float("inf")  # layer "2" breaks going forward
            step()
    mon.close()
    ours = ["".join(stack.format()) for stack in found if from_gradtui(stack)]
    assert not ours, "synchronising CUDA calls from gradtui:\n" + "\n".join(ours)
    assert mon.events is not None
    events = mon.events.drain()
    rows = {e.step: e for e in events if isinstance(e, CaptureStats)}
    assert sorted(rows) == list(range(1, STEPS))
    for s in range(1, STEPS - 2):
        a = outputs[s].double()
        np.testing.assert_allclose(rows[s].act_rms[1], float(a.square().mean().sqrt()), rtol=1e-5)
        np.testing.assert_allclose(rows[s].act_max[1], float(a.abs().max()), rtol=1e-5)
    origins = [e for e in events if isinstance(e, NonFiniteOrigin)]
    assert [(o.step, o.module, o.direction) for o in origins] == [(STEPS - 2, "2", "forward")]
