"""The CPU squared norms' size-aware split (one fused call for small tensors, a dot for large
ones) against plain torch, layer by layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bare_monitor import bare_monitor
from torch import nn

from gradtui.model.events import StepStats
from gradtui.probe.stats import SMALL_NUMEL, cpu_sq_norms


class Mixed(nn.Module):
    """Many small gradients, three at or past the split, one just below it, and a float64 one."""

    def __init__(self) -> None:
        super().__init__()
        self.narrow = nn.Sequential(*[nn.Linear(32, 32) for _ in range(30)])
        self.up = nn.Linear(32, 512)
        self.wide = nn.Linear(512, 512)  # 262144 values: a dot
        self.down = nn.Linear(512, 256)
        self.edge = nn.Linear(256, 256)  # exactly SMALL_NUMEL: a dot
        self.below = nn.Linear(256, 255)  # one row short of it: the fused call
        self.head = nn.Linear(255, 3)
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.narrow(x))
        for layer in (self.up, self.wide, self.down, self.edge, self.below):
            h = torch.tanh(layer(h))
        out: torch.Tensor = self.head(h) * self.scale.float()
        return out


def test_split_sizes_sit_on_either_side_of_the_threshold() -> None:
    model = Mixed()
    assert model.edge.weight.numel() == SMALL_NUMEL and model.below.weight.numel() < SMALL_NUMEL
    sizes = [p.numel() for p in model.parameters()]
    assert sum(n < SMALL_NUMEL for n in sizes) > 60 and sum(n >= SMALL_NUMEL for n in sizes) == 3


@pytest.mark.parametrize("detail_every", [1, 1000], ids=["general-path", "cpu-fast-path"])
def test_per_layer_norms_match_torch_vector_norm(detail_every: int) -> None:
    torch.manual_seed(0)
    model = Mixed()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = bare_monitor(model, opt, queue_size=100, detail_every=detail_every)
    x, y = torch.randn(16, 32), torch.randint(0, 3, (16,))
    expected = []
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        per_layer = []
        for name in mon.layer_names:
            module = model.get_submodule(name)
            grads = [p.grad.reshape(-1) for p in module.parameters(recurse=False) if p.grad is not None]
            per_layer.append(float(torch.linalg.vector_norm(torch.cat(grads), dtype=torch.float64)))
        expected.append(per_layer)
        mon.step(loss)
        opt.step()
    mon.close()
    assert mon.events is not None
    steps = [e for e in mon.events.drain() if isinstance(e, StepStats)]
    assert len(steps) == 3
    for stats, want in zip(steps, expected, strict=True):
        # float32 sums of up to 262144 values: well within 1e-6 of the float64 norm, and a
        # norm put in another layer's place is off by far more.
        np.testing.assert_allclose(stats.grad_norm, want, rtol=1e-6)
        assert stats.global_norm == pytest.approx(float(np.sqrt(np.sum(np.square(want)))), rel=1e-6)


def test_cpu_sq_norms_keep_the_order_of_mixed_sizes() -> None:
    torch.manual_seed(0)
    tensors = [
        torch.randn(300, 300),
        torch.randn(7),
        torch.empty(0),
        torch.randn(SMALL_NUMEL, dtype=torch.float64),
        torch.randn(64, 64).t(),  # not contiguous
        torch.randn(SMALL_NUMEL - 1),
        torch.randn(5, 5, requires_grad=True),  # gradients made with create_graph=True
        torch.randn(SMALL_NUMEL, requires_grad=True),
        torch.randn(40, 40)[::2, 1::3],  # strided: measured through a copy, the same values
        torch.full((3,), 1e30),  # squares past float32's range: measured again in float64
    ]
    got = cpu_sq_norms(tensors)
    want = [float(t.detach().double().pow(2).sum()) for t in tensors]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=2e-6)
