"""The fused per-layer statistics of a step: computed on the gradients' own device with a
handful of `torch._foreach_*` kernels, packed into one small vector (named segments, one
collective when distributed) and copied to the host once.

`GradStats` computes; `Pending` holds a step's host copy until it is ready (at once on
CPU, after a CUDA event otherwise); `gradtui.probe.packed` holds the vector's layout and turns
it back into events. Detail steps add mean/max |g|, the zero fraction, weight norms and each
layer's histogram of log2|g| (`gradtui.probe.histogram`), all in the same vector.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from gradtui.probe.amp import AmpScale
from gradtui.probe.dist import DistContext, local
from gradtui.probe.histogram import SMALL_NUMEL, GradHistogram, cpu_nonzero
from gradtui.probe.layers import Layer, grad_values, real_values, value_count
from gradtui.probe.packed import StepMeta


class GradIndex(NamedTuple):
    """Which parameters have a gradient now, and where they belong (cached per pattern)."""

    which: list[int]
    """Indices (into `GradStats.params`) of the parameters with a gradient."""
    layers: torch.Tensor
    """The layer of each of them, on the device (for per-layer sums there)."""
    has_grad: np.ndarray
    """Per layer: some parameter of it has a gradient."""
    numel: np.ndarray
    """Per layer: values with a gradient."""
    layer_of: np.ndarray
    """The layer of each parameter in `which`, on the host."""


class Pending:
    """Host copy of one step's statistics; ready at once on CPU, after an event on CUDA."""

    def __init__(self, vec: torch.Tensor | np.ndarray, meta: StepMeta) -> None:
        self.meta = meta
        # A host array stays one: read at each sampled step, and turning it into a tensor and back
        # cost 10-15 us right after the optimizer step.
        self._array: np.ndarray | None = None
        self.host: torch.Tensor | None = None
        self._event: torch.cuda.Event | None = None
        if isinstance(vec, np.ndarray):
            self._array = vec
        else:
            self.host, self._event = to_host(vec)
        self._stepped: tuple[torch.Tensor | float, torch.cuda.Event | None] | None = None

    def attach_stepped(self, factor: torch.Tensor | float) -> None:
        """The factor between the gradients after gradtui's clipping and those the optimizer used."""
        self._stepped = to_host(factor) if isinstance(factor, torch.Tensor) else (factor, None)

    def ready(self) -> bool:
        events = [self._event, self._stepped[1] if self._stepped is not None else None]
        return all(e is None or bool(e.query()) for e in events)

    def values(self) -> np.ndarray:
        if self._array is not None:
            return self._array
        if self._event is not None:
            self._event.synchronize()
        assert self.host is not None
        out: np.ndarray = self.host.numpy()
        return out

    def stepped_factor(self) -> float:
        """NaN when no optimizer step was measured."""
        if self._stepped is None:
            return math.nan
        host, event = self._stepped
        if event is not None:
            event.synchronize()
        return host if isinstance(host, float) else float(host.reshape(-1)[0])


def to_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on `device`. To CUDA through pinned memory with a non-blocking
    copy: an upload from pageable memory waits for the stream, a host sync."""
    host = torch.from_numpy(np.ascontiguousarray(values))
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def to_host(vec: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """A host copy: at once on CPU; on CUDA a non-blocking copy into pinned memory and its event."""
    if vec.device.type == "cuda":
        host = torch.empty(vec.shape, dtype=vec.dtype, pin_memory=True)
        host.copy_(vec, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event
    return vec.to("cpu"), None


@dataclass
class StepInputs:
    """What a sampled step folds in besides the gradients."""

    loss: torch.Tensor | float | None
    detail: bool
    amp: AmpScale | None = None
    """A GradScaler's factor and loss scale: statistics are divided by the factor."""
    lanes: tuple[torch.Tensor, torch.Tensor] | None = None
    update: torch.Tensor | None = None
    """Squared update and weight norms per layer of the last detail step (see `UpdateRatio`)."""
    capture: list[tuple[str, torch.Tensor]] | None = None
    """A deep capture's segments (`gradtui.probe.capture.DeepCapture.take`)."""


Clip = Callable[[list[torch.Tensor], torch.Tensor | None, Sequence[int]], torch.Tensor]

def cpu_sq_norms(tensors: Sequence[torch.Tensor]) -> np.ndarray:
    """Squared L2 norms of CPU float32/float64 tensors, as float64 (the host is the device).

    A Python call per tensor costs ~3-5 us, so the small tensors go through one `_foreach_norm`;
    a large one keeps its BLAS dot, which rounds less. `benchmarks/sq_norms.py` measures the ways
    side by side in a training loop: a NumPy dot per tensor takes less time there, but the step
    as a whole does not (whoever reads the gradients first after backward pays for the cache
    misses, and the optimizer reads them next).
    """
    out = np.empty(len(tensors), np.float64)
    small: list[torch.Tensor] = []
    where: list[int] = []
    for i, t in enumerate(tensors):
        if t.requires_grad:
            t = t.detach()  # made with create_graph=True
        if t.numel() < SMALL_NUMEL:
            small.append(t)
            where.append(i)
        else:
            f = t.reshape(-1)
            out[i] = float(torch.dot(f, f))
    if small:
        norms = torch.stack(torch._foreach_norm(small)).to(torch.float64).numpy()
        out[where] = norms * norms  # squared in float64: a float32 square would round once more
    return exact_overflow(tensors, out)


def exact_overflow(tensors: Sequence[torch.Tensor], sq: np.ndarray) -> np.ndarray:
    """`sq` (host squared norms of `tensors`) with each +inf recomputed in float64: a float32 sum of
    squares overflows past 3.4e38 although every value is finite (values of 1e19), and a norm that
    is not finite must mean values that are not (`StepStats.nonfinite` counts them). Free while
    every norm is finite; CPU only (elsewhere the norms accumulate in float64, `GradStats.norms`)."""
    if math.isfinite(sq.sum()):
        return sq  # every norm finite (a sum of squares is never -inf)
    over = np.flatnonzero(np.isposinf(sq))
    for i in over.tolist():
        sq[i] = float(torch.linalg.vector_norm(tensors[i].detach(), dtype=torch.float64)) ** 2
    return sq


class GradStats:
    """Per-layer gradient statistics over a fixed list of parameters."""

    def __init__(self, layers: list[Layer], dist: DistContext | None, defer: bool | None) -> None:
        self.layers = layers
        self.params: list[nn.Parameter] = [p for layer in layers for p in layer.params]
        self.param_layer = np.array([i for i, layer in enumerate(layers) for _ in layer.params], np.int64)
        self.n = len(layers)
        self.device = local(self.params[0]).device
        # float64 accumulation keeps huge-but-finite norms finite; MPS has no float64.
        self.acc = torch.float32 if self.device.type == "mps" else torch.float64
        self.defer = (self.device.type == "cuda") if defer is None else defer
        """Read each step's host copy one step later (CUDA), so training never waits on it."""
        self.dist = dist
        self.mask = dist.mask(self.device, self.acc) if dist is not None else None
        self.on_host = self.device.type == "cpu" and not self.defer and dist is None
        """The host holds each step's values at `mon.step` (CPU, read at once, one process)."""
        self.fast_cpu = (
            self.on_host
            and all(p.dtype in (torch.float32, torch.float64) and not p.is_sparse for p in self.params)
        )
        self.layer_index = to_device(self.param_layer, self.device)
        self._plain = self.fast_cpu and not any(
            getattr(layer.module, "sparse", False) for layer in layers
        )
        """Gradients are the parameters' own dense tensors (no sparse gradient, no DTensor shard)."""
        self._index_cache: dict[bytes, GradIndex] = {}
        self._mask_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.hist = GradHistogram()

    # ------------------------------------------------------------ building blocks

    def grad_index(self) -> GradIndex:
        """Which parameters have gradients now, and their layer index (cached by pattern)."""
        key = bytes(p.grad is not None for p in self.params)
        hit = self._index_cache.get(key)
        if hit is None:
            which = np.flatnonzero(np.frombuffer(key, np.uint8))
            layer_of = self.param_layer[which]
            idx_t = to_device(layer_of, self.device)
            has_grad = np.zeros(self.n, bool)
            has_grad[layer_of] = True
            numel = np.zeros(self.n, np.int64)
            np.add.at(numel, layer_of, [value_count(local(self.params[i])) for i in which])
            hit = GradIndex(which.tolist(), idx_t, has_grad, numel, layer_of)
            if len(self._index_cache) > 64:
                self._index_cache.clear()
            self._index_cache[key] = hit
        return hit

    def current(self) -> tuple[GradIndex, list[torch.Tensor]]:
        """`grad_index()` and the gradients it names, in one pass over the parameters where every one
        has a plain gradient, none made with `create_graph=True` (the common case: a Python pass over
        100 parameters costs ~0.1 ms)."""
        if self._plain:
            grads = [p.grad for p in self.params]
            if not any(g is None or g.requires_grad for g in grads):
                key = b"\x01" * len(grads)
                hit = self._index_cache.get(key)
                if hit is not None:
                    return hit, grads  # type: ignore[return-value]
        index = self.grad_index()
        return index, self.grads(index.which)

    def mask_of(self, which: Sequence[int]) -> torch.Tensor:
        """The distributed mask of the parameters `which` (indexing a device tensor with a host list is a sync)."""
        assert self.mask is not None
        key = tuple(which)
        hit = self._mask_cache.get(key)
        if hit is None:
            if len(self._mask_cache) > 64:
                self._mask_cache.clear()
            hit = self._mask_cache[key] = self.mask.index_select(0, to_device(np.array(key, np.int64), self.device))
        return hit

    def grads(self, which: Sequence[int]) -> list[torch.Tensor]:
        return [grad_values(self.params[i].grad) for i in which]  # type: ignore[arg-type]

    def per_layer(
        self, per_param: torch.Tensor, idx: torch.Tensor, which: Sequence[int] | None, reduce: str = "sum"
    ) -> torch.Tensor:
        """Per-parameter values folded into per-layer values (masked across ranks when distributed)."""
        out = torch.zeros(self.n, dtype=per_param.dtype, device=per_param.device)
        if reduce == "amax":
            return out.scatter_reduce_(0, idx, per_param, reduce="amax", include_self=False)
        if self.mask is not None:
            per_param = per_param * (self.mask if which is None else self.mask_of(which))
        return out.index_add_(0, idx, per_param)

    def norms(self, tensors: Sequence[torch.Tensor], ord: float = 2.0) -> torch.Tensor:  # noqa: A002
        """Per-tensor norms as one accumulation-dtype vector on the main device."""
        if not tensors:
            return torch.zeros(0, dtype=self.acc, device=self.device)
        by_dev: dict[torch.device, list[int]] = {}
        for i, t in enumerate(tensors):
            by_dev.setdefault(t.device, []).append(i)
        # Off the CPU an L2 norm accumulates in the accumulation dtype (float64 but on MPS): a float32
        # sum of squares overflows for finite values of 1e19, and a non-finite norm must mean
        # non-finite values. The pass is memory-bound, so the wider sum costs no extra read.
        wide = self.acc if ord == 2.0 and self.device.type != "cpu" else None
        if len(by_dev) == 1:
            out = torch.stack(torch._foreach_norm(list(tensors), ord, dtype=wide)).to(self.acc)
        else:
            out = torch.empty(len(tensors), dtype=self.acc, device=self.device)
            for dev_idx in by_dev.values():
                vals = torch.stack(torch._foreach_norm([tensors[i] for i in dev_idx], ord, dtype=wide))
                out[to_device(np.array(dev_idx, np.int64), self.device)] = vals.to(self.device).to(self.acc)
        if ord == 2.0 and self.device.type == "cpu":
            out = torch.from_numpy(np.sqrt(exact_overflow(tensors, out.numpy() ** 2)))
        return out

    def sq_norms(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-tensor squared L2 norms as one accumulation-dtype vector on the main device."""
        if self.device.type == "cpu" and all(
            t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) for t in tensors
        ):
            return torch.from_numpy(cpu_sq_norms(tensors))
        norms = self.norms(tensors)
        return norms * norms

    def abs_max(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        if not grads:
            return torch.zeros(0, dtype=self.acc, device=self.device)
        if self.device.type == "cpu":
            # aminmax is ~20x faster than an inf-norm on CPU (measured: 0.45 vs 8.5 ms, 3M values).
            mm = [torch.aminmax(g) if g.numel() else (g.new_zeros(()), g.new_zeros(())) for g in grads]
            return torch.stack([torch.maximum(hi.abs(), lo.abs()) for lo, hi in mm]).to(self.acc)
        return self.norms(grads, math.inf)

    def global_norm(self, grads: list[torch.Tensor], which: Sequence[int]) -> torch.Tensor:
        """The L2 norm of all gradients (across ranks when distributed), on the device."""
        sq = self.sq_norms(grads)
        if self.mask is not None and self.dist is not None:
            sq = self.dist.all_reduce_sum((sq * self.mask_of(which)).sum().reshape(1))
        return sq.sum().sqrt()

    def count_nonfinite_if_needed(
        self, layer_sq: np.ndarray, grads: Sequence[torch.Tensor], which: list[int]
    ) -> np.ndarray:
        counts = np.zeros(self.n, np.int64)
        if np.isfinite(layer_sq).all():
            return counts
        # NaN/Inf reach the L2 norm, so only layers whose norm is non-finite need counting.
        # (An overflowing but finite layer is counted too, and correctly gives 0.)
        bad_layers = set(np.flatnonzero(~np.isfinite(layer_sq)).tolist())
        for g, pi in zip(grads, which, strict=True):
            li = int(self.param_layer[pi])
            if li in bad_layers:
                counts[li] += int((~torch.isfinite(g)).sum())
        return counts

    # ------------------------------------------------------------ a sampled step

    def sample(
        self,
        index: GradIndex,
        inputs: StepInputs,
        meta: StepMeta,
        clip: Clip | None,
        grads: list[torch.Tensor] | None = None,
    ) -> Pending | None:
        """Compute a sampled step's statistics (clipping when `clip` is given, after measuring);
        returns its host copy on the primary rank, None on the others. `grads`: those `index`
        names, when the caller has them already."""
        which, idx, layer_of = index.which, index.layers, index.layer_of
        if grads is None:
            grads = self.grads(which)
        plain = (
            not inputs.detail
            and inputs.amp is None
            and inputs.lanes is None
            and inputs.update is None
            and inputs.capture is None
        )
        if self.fast_cpu and plain:
            return self._sample_fast(inputs.loss, grads, which, layer_of, meta, clip)
        acc, n, dist = self.acc, self.n, self.dist
        segs: list[tuple[str, torch.Tensor]] = []

        def seg(name: str, t: torch.Tensor) -> None:
            segs.append((name, t.reshape(-1).to(acc)))

        inv = 1.0 / inputs.amp.factor if inputs.amp is not None else None
        sq = self.sq_norms(grads)
        seg("layer_sq", self.per_layer(sq if inv is None else sq * (inv * inv), idx, which))
        if dist is not None:
            ones = torch.ones(len(which), dtype=acc, device=self.device)
            seg("grad_params", self.per_layer(ones, idx, which))
            numel_t = to_device(np.array([g.numel() for g in grads], np.float64), self.device).to(acc)
            seg("numel", self.per_layer(numel_t, idx, which))
        # Before clipping: the statistics describe the gradients backward produced.
        if inputs.detail:
            l1, amax = self.norms(grads, 1.0), self.abs_max(grads)
            if inv is not None:
                l1, amax = l1 * inv, amax * inv
            seg("l1", self.per_layer(l1, idx, which))
            nnz = cpu_nonzero([g.detach().reshape(-1) for g in grads]) if self.fast_cpu else self.norms(grads, 0.0)
            seg("nnz", self.per_layer(nnz, idx, which))
            seg("amax", self.per_layer(amax, idx, which, "amax"))
            w_sq = self.sq_norms([real_values(local(p.detach())) for p in self.params])
            seg("w_sq", self.per_layer(w_sq, self.layer_index, None))
            weight = self.mask_of(which) if self.mask is not None else None
            scale = inputs.amp.factor if inputs.amp is not None else None
            # The 0-"norm" counts non-zeros exactly where its float sum of ones is exact.
            exact = self.fast_cpu or all(
                g.dtype == torch.float64 or (g.dtype == torch.float32 and g.numel() <= 1 << 24) for g in grads
            )
            hist = self.hist.layer_hist(grads, idx, n, acc, scale=scale, weight=weight, nonzero=nnz if exact else None)
            seg("hist", hist)
        count_on_device = (self.defer or dist is not None) and bool(grads)
        if count_on_device:
            # Deferred (CUDA) or gathered reads cannot come back for the counts later, so
            # count now: x*0 is 0 for finite x and NaN otherwise, and the 0-"norm" counts non-zeros.
            zeros = torch._foreach_mul(grads, 0.0)
            per_param = torch.stack(torch._foreach_norm(zeros, 0)).to(acc)
            seg("nonfinite", self.per_layer(per_param, idx, which))
            if dist is not None:
                # Unmasked: a NaN in any rank's copy names that rank, replicated or not.
                seg("rank_nonfinite", per_param.sum())
        elif dist is not None:
            seg("nonfinite", torch.zeros(n, dtype=acc, device=self.device))
            seg("rank_nonfinite", torch.zeros(1, dtype=acc, device=self.device))
        seg("loss", loss_tensor(inputs.loss, self.device, acc))
        if inputs.lanes is not None:
            # Activations are per-rank data: their squared norms add up across ranks.
            seg("lane_sq", inputs.lanes[0])
            seg("lane_seen", inputs.lanes[1])
        if inputs.amp is not None:
            seg("scale", inputs.amp.scale)
        if inputs.update is not None:
            seg("upd_d2", inputs.update[:n])
            seg("upd_w2", inputs.update[n:])
        for name, t in inputs.capture or ():
            seg(name, t)

        vec = torch.cat([t for _, t in segs])
        if dist is not None:
            gathered = dist.gather(vec)  # the one collective of this sampled step
            total_sq = gathered[:, :n].sum()
        else:
            gathered = vec.reshape(1, -1)
            total_sq = segs[0][1].sum()
        meta.layout = [(name, t.numel()) for name, t in segs]
        if clip is not None:
            # The clipped norm is global already (computed from the gathered total or reduced).
            clipped = clip(grads, total_sq.sqrt(), which)
            gathered = torch.cat([gathered, clipped.reshape(1, 1).expand(gathered.shape[0], 1)], dim=1)
            meta.layout.append(("clipped", 1))
        if dist is not None and not dist.primary:
            return None  # the other ranks took part in the collective; rank 0 reports
        pending = Pending(gathered, meta)
        if not self.defer and not count_on_device:
            # On CPU the counts can wait until the norms say they are needed (rarely).
            meta.counts = self.count_nonfinite_if_needed(pending.values()[0, :n], grads, which)
        return pending

    def _sample_fast(
        self,
        loss: torch.Tensor | float | None,
        grads: list[torch.Tensor],
        which: list[int],
        layer_of: np.ndarray,
        meta: StepMeta,
        clip: Clip | None,
    ) -> Pending:
        """The common sampled step on CPU: host and device are one, so each small result is
        read as a float and combined in NumPy (a torch op on a tiny tensor costs ~5 us)."""
        sq = cpu_sq_norms(grads)
        layer_sq = np.bincount(layer_of, weights=sq, minlength=self.n) if len(sq) else np.zeros(self.n)
        total = math.sqrt(layer_sq.sum())
        row = [layer_sq, [loss_value(loss)]]
        meta.layout = [("layer_sq", self.n), ("loss", 1)]
        if clip is not None and grads:
            clipped = float(clip(grads, torch.tensor(total, dtype=self.acc), which)[0])
            row.append([clipped])
            meta.layout.append(("clipped", 1))
        meta.counts = self.count_nonfinite_if_needed(layer_sq, grads, which)
        return Pending(np.concatenate(row)[None, :], meta)


def loss_tensor(loss: torch.Tensor | float | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if loss is None:
        return torch.full((1,), math.nan, dtype=dtype, device=device)
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(f"step(loss) needs a scalar loss, got a tensor of shape {tuple(loss.shape)}")
        return local(loss.detach()).reshape(1).to(device=device, dtype=dtype)
    if is_number(loss):
        return torch.full((1,), float(loss), dtype=dtype, device=device)
    raise TypeError(f"step(loss) takes a tensor, a number or None, got {type(loss).__name__}")


def host_loss(loss: object) -> float | None:
    """The loss as a float where reading it costs no device sync (a number, a CPU tensor), else None."""
    if isinstance(loss, torch.Tensor):
        if loss.device.type != "cpu" or loss.numel() != 1:
            return None
        return float(loss.item())
    if is_number(loss):
        return float(loss)  # type: ignore[arg-type]
    return None


def is_number(x: object) -> bool:
    """A real number a loss may be given as: Python's, NumPy's scalars (a loss computed in NumPy);
    not a bool."""
    return isinstance(x, (float, int, numbers.Real)) and not isinstance(x, (bool, np.bool_))


def loss_value(loss: torch.Tensor | float | None) -> float:
    value = host_loss(loss)
    if value is not None:
        return value
    # Anything else: the checks (and a device read) of `loss_tensor`.
    return float(loss_tensor(loss, torch.device("cpu"), torch.float64)[0]) if loss is not None else math.nan
