"""Distributed (2 gloo processes on CPU), mixed precision and compiled models."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import gradtui
from gradtui.model.events import RunStart, StepStats

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker  # noqa: E402

WORKER = Path(__file__).parent / "dist_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_ranks(mode: str, tmp_path: Path) -> list[dict[str, object]]:
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GRADTUI_CONNECT", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), mode, str(rank), "2", port, str(tmp_path)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def reference() -> dict[str, list[list[float]]]:
    """The same model on the whole global batch in one process."""
    model = dist_worker.make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xs, ys = dist_worker.data()
    out: dict[str, list[list[float]]] = {"grad_norm": [], "mean_abs": [], "max_abs": [], "weight_norm": []}
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for step in range(dist_worker.STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xs[step]), ys[step]).backward()
        gs = [[p.grad.double() for p in m.parameters() if p.grad is not None] for m in linears]
        out["grad_norm"].append([math.sqrt(sum(float(g.pow(2).sum()) for g in layer)) for layer in gs])
        out["mean_abs"].append(
            [sum(float(g.abs().sum()) for g in layer) / sum(g.numel() for g in layer) for layer in gs]
        )
        out["max_abs"].append([max(float(g.abs().max()) for g in layer) for layer in gs])
        out["weight_norm"].append(
            [math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in m.parameters())) for m in linears]
        )
        if step == dist_worker.LR_CHANGE_STEP:
            opt.param_groups[0]["lr"] = 0.05
        opt.step()
    return out


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_ranks_report_the_global_statistics_and_apply_commands_together(mode: str, tmp_path: Path) -> None:
    ranks = run_ranks(mode, tmp_path)
    ref = reference()
    primary = ranks[0]
    assert primary["layers"] == ["0", "2", "4"]  # wrapper segments (module., FSDP) left out
    for stat in ("grad_norm", "mean_abs", "max_abs", "weight_norm"):
        np.testing.assert_allclose(primary[stat], ref[stat], rtol=1e-5, err_msg=stat)  # type: ignore[arg-type]
    # The LR command sent on rank 0 took effect at the same step on both ranks.
    change = dist_worker.LR_CHANGE_STEP
    expected = [0.1] * change + [0.05] * (dist_worker.STEPS - change)
    assert ranks[0]["lrs"] == expected and ranks[1]["lrs"] == expected
    assert "grad_norm" not in ranks[1], "only rank 0 reports"


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_nonfinite_values_name_the_rank_they_came_from(mode: str, tmp_path: Path) -> None:
    primary = run_ranks(f"{mode}-nan", tmp_path)[0]
    last = dist_worker.STEPS - 1
    assert primary["nonfinite_ranks"] == [[]] * last + [[1]]
    np.testing.assert_allclose(primary["grad_norm"][:last], reference()["grad_norm"][:last], rtol=1e-5)  # type: ignore[index]
    # A sharded gradient's NaN is part of the global gradient; a replicated one is only rank 1's copy.
    assert sum(primary["nonfinite"][last]) == (1 if mode == "fsdp2" else 0)  # type: ignore[index]


def test_every_rank_rolls_back_at_the_same_step(tmp_path: Path) -> None:
    ranks = run_ranks("ddp-guard", tmp_path)
    # A rollback asked on rank 0 (step 1) and rank 1's NaN (step 3): both ranks back at the
    # state of step 0, at the same steps, with the same learning rate cut on top of StepLR.
    assert ranks[0]["back"] == ranks[1]["back"] == [1, 3]
    assert ranks[0]["lrs"] == ranks[1]["lrs"]
    lrs = ranks[0]["lrs"]
    assert lrs == pytest.approx([0.01, 0.01 * 0.9 * 0.5, 0.01 * 0.81 * 0.5, 0.01 * 0.729 * 0.25])  # type: ignore[arg-type]
    assert ranks[0]["actions"] == [[1, "rollback"], [1, "lr_cut"], [3, "skip"], [3, "rollback"], [3, "lr_cut"]]
    assert ranks[1]["actions"] == []  # only rank 0 reports
    assert ranks[0]["w"] == ranks[1]["w"]
    # A capture asked on rank 0 alone (step 0) is armed on every rank at the same step: the ranks'
    # sampled vectors must match, or the next gather fails.
    assert ranks[0]["covered"] == ranks[1]["covered"] and any(ranks[0]["covered"]), ranks[0]["covered"]


@pytest.mark.gpu
def test_classic_fsdp_needs_an_accelerator_so_it_runs_only_on_gpu(tmp_path: Path) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("classic FSDP needs two CUDA devices here (it refuses CPU)")
    ranks = run_ranks("fsdp1", tmp_path)
    np.testing.assert_allclose(ranks[0]["grad_norm"], reference()["grad_norm"], rtol=1e-5)  # type: ignore[arg-type]


# ---------------------------------------------------------------- mixed precision


def test_amp_statistics_describe_unscaled_gradients_and_count_skipped_steps() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    mon = gradtui.watch(model, opt, queue=True, detectors=False)
    x, y = torch.randn(4, 8), torch.randint(0, 2, (4,))

    def layer_norms() -> list[float]:
        return [
            math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in m.parameters() if p.grad is not None))
            for m in (model[0], model[2])
        ]

    expected = []
    for step in range(3):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if step == 1:  # an overflow: the scaler must skip this step
            g = model[0].weight.grad
            assert g is not None
            g[0, 0] = math.inf
        scale = scaler.get_scale()
        expected.append([n / scale for n in layer_norms()])  # the unscaled reference
        mon.step(loss, scaler=scaler)
        scaler.step(opt)  # the scaler sees that mon.step unscaled already and does not unscale twice
        scaler.update()
    mon.close()
    assert mon.events is not None
    steps = [e for e in mon.events.drain() if isinstance(e, StepStats)]
    for s, ref in zip(steps, expected, strict=True):
        if s.step != 1:
            np.testing.assert_allclose(s.grad_norm, ref, rtol=1e-5)
    assert [s.amp_skipped for s in steps] == [False, True, False]
    assert [s.loss_scale for s in steps] == [2.0**10, 2.0**10, 2.0**9]
    assert steps[1].nonfinite.tolist() == [1, 0]
    assert not math.isfinite(steps[1].grad_norm[0]) and math.isfinite(steps[1].grad_norm[1])


# ---------------------------------------------------------------- compiled models, sometimes-unused parameters


def test_compiled_model_is_watched_under_its_own_layer_names() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    compiled = torch.compile(model, backend="aot_eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradtui.watch(compiled, opt, queue=True, detectors=False, detail_every=1)
    x, y = torch.randn(5, 4), torch.randn(5, 1)
    norms = []
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.mse_loss(compiled(x), y)
        loss.backward()
        norms.append([math.sqrt(sum(float(p.grad.pow(2).sum()) for p in m.parameters())) for m in (model[0], model[2])])
        mon.step(loss)
        opt.step()
    mon.close()
    assert mon.events is not None
    events = mon.events.drain()
    start = events[0]
    assert isinstance(start, RunStart) and [layer.name for layer in start.layers] == ["0", "2"]
    steps = [e for e in events if isinstance(e, StepStats)]
    np.testing.assert_allclose([s.grad_norm for s in steps], norms, rtol=1e-5)


def test_parameters_without_gradient_in_some_steps() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)
            self.b = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
            out: torch.Tensor = self.b(x) if use_b else self.a(x)
            return out

    model = Branchy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = gradtui.watch(model, opt, queue=True, detectors=False, detail_every=1)
    x = torch.randn(2, 3)
    for step in range(4):
        opt.zero_grad(set_to_none=True)
        model(x, use_b=step % 2 == 1).sum().backward()
        mon.step()
        opt.step()
    mon.close()
    assert mon.events is not None
    steps = [e for e in mon.events.drain() if isinstance(e, StepStats)]
    assert [s.has_grad.tolist() for s in steps] == [[True, False], [False, True], [True, False], [False, True]]
    for s in steps:
        assert np.isnan(s.grad_norm[~s.has_grad]).all() and np.isfinite(s.grad_norm[s.has_grad]).all()
        assert s.mean_abs is not None and np.isnan(s.mean_abs[~s.has_grad]).all()
        assert s.global_norm == pytest.approx(float(np.nansum(s.grad_norm**2)) ** 0.5)
