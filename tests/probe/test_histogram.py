"""The probe's per-layer histogram of log2|g| against NumPy's histogram of the same gradients."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bare_monitor import bare_monitor
from torch import nn

import gradtui
import gradtui.probe.histogram as histogram
from gradtui.model.events import GRAD_HIST_BUCKETS, GRAD_HIST_HI, GRAD_HIST_LO, StepStats, grad_hist_exponent
from gradtui.probe.histogram import GradHistogram
from gradtui.probe.layers import find_layers
from gradtui.probe.monitor import Monitor
from gradtui.wire.codec import HEADER, decode_event, encode, unpack_payload

sys.path.insert(0, str(Path(__file__).parent))
import dist_worker  # noqa: E402
from test_distributed import run_ranks  # noqa: E402


def reference(values: list[np.ndarray]) -> np.ndarray:
    """np.histogram of log2|g| over a layer's gradient values, in `StepStats.grad_hist`'s columns."""
    a = np.abs(np.concatenate([v.astype(np.float64).ravel() for v in values])) if values else np.zeros(0)
    out = np.zeros(GRAD_HIST_BUCKETS, np.int64)
    out[0] = np.count_nonzero(a == 0)
    out[-1] = np.count_nonzero(~np.isfinite(a))
    exponents = np.floor(np.log2(a[(a > 0) & np.isfinite(a)]))
    clipped = np.clip(exponents, GRAD_HIST_LO, GRAD_HIST_HI - 1)
    out[1:-1] = np.histogram(clipped, bins=np.arange(GRAD_HIST_LO, GRAD_HIST_HI + 1))[0]
    return out


def edge_values(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values at every boundary: zeros of both signs, powers of two and the floats just below
    them, both ends of the range and beyond, subnormals, NaN and both infinities."""
    powers = [2.0**e for e in (GRAD_HIST_LO - 3, GRAD_HIST_LO, GRAD_HIST_LO + 1, -1, 0, 1, GRAD_HIST_HI - 1, 40)]
    below = [float(np.nextafter(np.array(p, np.float32), np.float32(0))) for p in powers]
    tiny = float(torch.finfo(dtype).tiny)
    vals = [0.0, -0.0, *powers, *below, *(-p for p in powers), tiny, tiny / 8, -tiny / 1024, 1e-45, 1e30, -1e-30]
    return torch.tensor([*vals, math.nan, math.inf, -math.inf], dtype=dtype)


class Mixed(nn.Module):
    """Layers of several shapes, a frozen one and one that gets no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 8)
        self.conv = nn.Conv1d(8, 6, 3)
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)
        self.unused = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(1, 2)
        h = torch.relu(self.conv(h)).mean(dim=2)
        out: torch.Tensor = self.head(self.frozen(h))
        return out


def _steps(mon: Monitor) -> list[StepStats]:
    assert mon.events is not None
    return [e for e in mon.events.drain() if isinstance(e, StepStats)]


@pytest.mark.parametrize("defer", [False, True], ids=["sync", "deferred"])
def test_monitor_histograms_equal_numpy_on_detail_steps_only(defer: bool) -> None:
    torch.manual_seed(0)
    model = Mixed()
    layers = find_layers(model)
    mon = bare_monitor(model, None, queue_size=100, detail_every=2, defer=defer)
    expected = []
    x = torch.randint(0, 30, (5, 7))
    for step in range(4):
        model.zero_grad()
        (model(x) * 10.0 ** (3 * step - 6)).sum().backward()  # a different range at each step
        g = model.conv.weight.grad
        assert g is not None
        edges = edge_values()
        g.view(-1)[: edges.numel()] = edges
        expected.append(
            [reference([p.grad.numpy() for p in layer.params if p.grad is not None]) for layer in layers]
        )
        mon.step()
    mon.close()
    steps = _steps(mon)
    assert [s.grad_hist is not None for s in steps] == [True, False, True, False]
    for s in steps:
        if s.grad_hist is None:
            continue
        assert s.grad_hist.dtype == np.int32 and s.grad_hist.shape == (len(layers), GRAD_HIST_BUCKETS)
        np.testing.assert_array_equal(s.grad_hist, np.array(expected[s.step]))
        names = [layer.name for layer in layers]
        # No gradient (frozen, unused): an all-zero row; every value of the others counted once.
        assert not s.grad_hist[names.index("frozen")].any() and not s.grad_hist[names.index("unused")].any()
        numel = [sum(p.numel() for p in layer.params) for layer in layers]
        assert [int(r.sum()) for r in s.grad_hist] == [n if s.has_grad[i] else 0 for i, n in enumerate(numel)]


def test_edge_values_land_in_their_columns() -> None:
    """The columns by hand, independent of NumPy: 2**e opens column 1 + e - LO."""
    values = torch.tensor([2.0**-3, 0.2, 0.0, -0.0, math.nan])
    h = GradHistogram().layer_hist([values], torch.tensor([0]), 1, torch.float64)
    col = {c: int(v) for c, v in enumerate(h.tolist()) if v}
    three = 1 + (-3 - GRAD_HIST_LO)
    assert col == {0: 2, three: 2, GRAD_HIST_BUCKETS - 1: 1}  # 0.2 is in [2**-3, 2**-2)
    assert grad_hist_exponent(three) == -3
    assert grad_hist_exponent(0) is None and grad_hist_exponent(GRAD_HIST_BUCKETS - 1) is None
    top = GradHistogram().layer_hist([torch.tensor([1e30, 2.0**-100])], torch.tensor([0]), 1, torch.float64)
    assert top[GRAD_HIST_BUCKETS - 2] == 1 and top[1] == 1  # clipped into the end columns


@pytest.mark.parametrize("small", [histogram.SMALL_NUMEL, 100], ids=["together", "one by one"])
@pytest.mark.parametrize("how", ["bincount", "histc", "index_add"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_every_counting_method_and_dtype_equals_numpy(
    how: str, dtype: torch.dtype, small: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA (histc) and other-device (index_add) counts run here on CPU; small chunks
    exercise the path of a gradient larger than one chunk. On CPU (bincount) the gradients under
    `SMALL_NUMEL` values are counted together, the others one by one (its exponent field alone,
    a byte for float32): a lower bound takes both ways."""
    monkeypatch.setattr(histogram, "CHUNK", 257)
    monkeypatch.setattr(histogram, "SMALL_NUMEL", small)
    torch.manual_seed(1)
    grads = [
        (torch.randn(40, 30) * torch.logspace(-12, 6, 30)).to(dtype),
        torch.cat([edge_values(dtype), torch.randn(100, dtype=dtype)]),
        torch.zeros(3, dtype=dtype),
        torch.randn(0, dtype=dtype),  # an empty gradient counts nothing
    ]
    idx = torch.tensor([0, 1, 0, 1])
    out = GradHistogram(how).layer_hist(grads, idx, 2, torch.float64).reshape(2, GRAD_HIST_BUCKETS).numpy()
    wide = [g.float().numpy() if dtype in (torch.float16, torch.bfloat16) else g.numpy() for g in grads]
    np.testing.assert_array_equal(out[0], reference([wide[0], wide[2]]))
    np.testing.assert_array_equal(out[1], reference([wide[1], wide[3]]))


def test_a_power_of_two_loss_scale_is_taken_off_exactly() -> None:
    torch.manual_seed(2)
    g = torch.randn(500) * torch.logspace(-15, 5, 500)
    idx = torch.tensor([0])
    plain = GradHistogram().layer_hist([g], idx, 1, torch.float64)
    for scale in (2.0**16, 2.0**-3):
        scaled = GradHistogram().layer_hist([g * scale], idx, 1, torch.float64, scale=torch.tensor([scale]))
        assert torch.equal(scaled, plain)


def test_a_weight_leaves_out_copies_another_rank_counts() -> None:
    a, b = torch.randn(10), torch.randn(20)
    both = GradHistogram().layer_hist([a, b], torch.tensor([0, 0]), 1, torch.float64, weight=torch.tensor([1.0, 0.0]))
    only_a = GradHistogram().layer_hist([a], torch.tensor([0]), 1, torch.float64)
    assert torch.equal(both, only_a)


def test_mixed_precision_histograms_describe_the_unscaled_gradients() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    mon = gradtui.watch(model, opt, queue=True, detectors=False, detail_every=1)
    x, y = torch.randn(4, 8), torch.randint(0, 2, (4,))
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scale = scaler.get_scale()
    expected = [reference([p.grad.numpy() / scale for p in m.parameters()]) for m in (model[0], model[2])]
    mon.step(scaler=scaler)
    mon.close()
    (s,) = _steps(mon)
    assert s.grad_hist is not None
    np.testing.assert_array_equal(s.grad_hist, np.array(expected))


def test_the_histogram_crosses_the_wire_intact() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    mon = bare_monitor(model, None, queue_size=10, detail_every=1)
    model(torch.randn(3, 4)).sum().backward()
    mon.step()
    mon.close()
    (s,) = _steps(mon)
    frame = encode(s)
    back = decode_event(unpack_payload(frame[HEADER.size :]))
    assert isinstance(back, StepStats) and back.grad_hist is not None and s.grad_hist is not None
    assert back.grad_hist.dtype == np.int32
    np.testing.assert_array_equal(back.grad_hist, s.grad_hist)


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_distributed_histograms_count_every_value_once(mode: str, tmp_path: Path) -> None:
    """Replicated (DDP) gradients count once, not once per rank; sharded ones (FSDP2) add up.
    The values themselves are averaged across ranks, so a few may sit one column from the
    single-process reference (rounding at a power of two)."""
    if mode == "fsdp2":
        pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch.distributed.fsdp")
    ranks = run_ranks(mode, tmp_path)
    got = np.array(ranks[0]["grad_hist"])  # type: ignore[arg-type]
    model = dist_worker.make_model()
    xs, ys = dist_worker.data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    expected = []
    for step in range(dist_worker.STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xs[step]), ys[step]).backward()
        expected.append([reference([p.grad.numpy() for p in m.parameters()]) for m in linears])
        if step == dist_worker.LR_CHANGE_STEP:
            opt.param_groups[0]["lr"] = 0.05  # the worker's command, as the probe applies it
        opt.step()
    expected_a = np.array(expected)
    assert got.shape == expected_a.shape
    np.testing.assert_array_equal(got.sum(axis=2), expected_a.sum(axis=2))  # every value, once
    moved = np.abs(got - expected_a).sum(axis=2) / 2
    assert (moved <= 0.02 * expected_a.sum(axis=2)).all(), moved


def test_zero_fraction_is_exact_for_half_precision_gradients() -> None:
    """Was -inf: the non-zero count of a float16 gradient overflowed float16 (70,001 > 65,504)."""
    model = nn.Linear(300, 300, bias=False).half()
    mon = bare_monitor(model, None, queue_size=10, detail_every=1)
    grad = torch.zeros(300, 300, dtype=torch.half)
    grad.view(-1)[:70_001] = 1.0
    model.weight.grad = grad
    mon.step()
    mon.close()
    (s,) = _steps(mon)
    assert s.zero_frac is not None and s.grad_hist is not None
    assert s.zero_frac.tolist() == [(90_000 - 70_001) / 90_000]
    assert int(s.grad_hist[0, 0]) == 90_000 - 70_001


def test_cpu_nonzero_counts_every_value_exactly() -> None:
    """Small tensors through the fused 0-norm, large ones through `count_nonzero`: both equal NumPy's
    count (zeros of either sign are zeros; NaN and the infinities are not)."""
    torch.manual_seed(3)
    sizes = [0, 7, histogram.SMALL_NUMEL - 1, histogram.SMALL_NUMEL, 3 * histogram.SMALL_NUMEL + 5]
    flats = []
    for n in sizes:
        t = torch.randn(n)
        t[torch.rand(n) < 0.3] = 0.0
        if n > 20:
            t[:3] = torch.tensor([-0.0, math.nan, -math.inf])
        flats.append(t)
    flats.append(torch.randn(histogram.SMALL_NUMEL + 1, dtype=torch.float64).relu())
    got = histogram.cpu_nonzero(flats)
    assert got.dtype == torch.float64
    assert got.tolist() == [float(np.count_nonzero(f.numpy())) for f in flats]
