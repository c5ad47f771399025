"""Per-layer histograms of log2|g| on detail steps, computed where the gradients are.

floor(log2|g|) of a normal float is its exponent field minus the bias, so each gradient
is read as integers (a view, no copy), shifted once to a key (sign and exponent field)
and counted once; the counts of the few hundred keys are then folded into the
`StepStats.grad_hist` columns (see `gradtui.model.events`) on the device. Exact by
construction, and ~4x cheaper on CPU than bucketizing the floats (measured 0.45 vs 4.1 ms
for 262k values). The result rides in the step's vector: no host copy or sync of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradtui.model.events import GRAD_HIST_BUCKETS, GRAD_HIST_HI, GRAD_HIST_LO

CHUNK = 1 << 24
"""Values keyed at once: a huge embedding's gradient needs no integer copy of its full size,
and a chunk's count per key stays exact in float32 (the CUDA path counts in float32)."""

_FORMATS: dict[torch.dtype, tuple[torch.dtype, int, int]] = {
    torch.float32: (torch.int32, 23, 8),
    torch.float64: (torch.int64, 52, 11),
}
"""Float dtype -> (integer view, mantissa bits, exponent bits). Other floats are widened to
float32 first, exactly (half precision's subnormals become float32 normals)."""


def keys(flat: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Each value's key, sign and exponent field (0 .. 2**(1 + exponent bits) - 1), and the key count.

    An arithmetic shift leaves `field - 2**bits` for negative values and `field` for positive
    ones; adding 2**bits makes every key non-negative (negative values first).
    """
    view, mantissa, bits = _FORMATS[flat.dtype]
    key = flat.view(view) >> mantissa
    key += 1 << bits
    return key, 2 << bits


def count(key: torch.Tensor, n_keys: int, how: str | None = None) -> torch.Tensor:
    """How many of `key` hold each value 0 .. n_keys - 1 (int64), reading nothing back to the host.

    `how` forces a method (tests): "bincount" (CPU), "histc" (CUDA: its bincount reads the
    keys' min and max back to the host, a sync; histc with a given range does not) or
    "index_add" (any other device).
    """
    how = how or {"cpu": "bincount", "cuda": "histc"}.get(key.device.type, "index_add")
    if how == "bincount":
        return torch.bincount(key, minlength=n_keys)
    if how == "histc":
        # Keys up to 4095 and at most CHUNK values a call: float32 counts them exactly.
        return torch.histc(key.float(), bins=n_keys, min=0, max=n_keys).long()
    ones = torch.ones((), dtype=torch.int32, device=key.device).expand(key.numel())
    return torch.zeros(n_keys, dtype=torch.int32, device=key.device).index_add_(0, key, ones).long()


class GradHistogram:
    """Per-layer histograms of log2|g|; keeps each format's key -> column map on the devices it has met."""

    def __init__(self, how: str | None = None) -> None:
        self.how = how
        """Counting method (see `count`); None picks one per device."""
        self._plain: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def columns(self, dtype: torch.dtype, device: torch.device, scale: torch.Tensor | None) -> torch.Tensor:
        """The `grad_hist` column of each key of `dtype` (int64 on `device`).

        Exponent field 0 (zero and subnormals) goes to the lowest column (zeros are moved
        to column 0 afterwards, from their own count), the all-ones field (Inf, NaN) to the
        last. `scale`: the factor the gradients carry (a GradScaler's, a power of two), whose
        exponent is taken off on the device.
        """
        _, _, bits = _FORMATS[dtype]
        cache = (device, dtype)
        if scale is None and cache in self._plain:
            return self._plain[cache]
        field = torch.arange(2 << bits, device=device) & ((1 << bits) - 1)
        exponent = field - ((1 << (bits - 1)) - 1)
        if scale is not None:
            exponent = exponent - torch.log2(scale.to(device=device, dtype=torch.float32)).round().long()
        col = exponent.clamp(GRAD_HIST_LO, GRAD_HIST_HI - 1) - (GRAD_HIST_LO - 1)
        col = torch.where(field == 0, 1, col)
        col = torch.where(field == (1 << bits) - 1, GRAD_HIST_BUCKETS - 1, col)
        if scale is None:
            self._plain[cache] = col
        return col

    def layer_hist(
        self,
        grads: Sequence[torch.Tensor],
        idx: torch.Tensor,
        n_layers: int,
        acc: torch.dtype,
        *,
        scale: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        nonzero: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Histograms of `grads` folded into layers: a flat (n_layers * GRAD_HIST_BUCKETS,)
        vector of counts in `acc` on `idx`'s device (float64 holds counts exactly to 2**53).

        Args:
            grads: each parameter's gradient values.
            idx: the layer of each gradient (device tensor).
            n_layers: rows of the result.
            acc: the dtype of the result.
            scale: the factor the gradients carry (mixed precision), None for none.
            weight: a per-gradient multiplier (distributed: 0 for copies another rank counts).
            nonzero: each gradient's count of non-zero values when the caller has it exactly
                (on `idx`'s device); saves a pass over the values.
        """
        device = idx.device
        if not grads:
            return torch.zeros(n_layers * GRAD_HIST_BUCKETS, dtype=acc, device=device)
        formats = {g.dtype if g.dtype in _FORMATS else torch.float32 for g in grads}
        mixed = len(formats) > 1
        maps: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        rows, nonzeros = [], []
        for g in grads:
            flat = g.detach().reshape(-1)
            if flat.dtype not in _FORMATS:
                flat = flat.float()
            counts, nz = self._count(flat, nonzero is None)
            if mixed:
                # Key counts of each format have their own length: fold each into columns first.
                key = (flat.device, flat.dtype)
                if key not in maps:
                    maps[key] = self.columns(flat.dtype, flat.device, scale)
                counts = torch.zeros(GRAD_HIST_BUCKETS, dtype=counts.dtype, device=flat.device).index_add_(
                    0, maps[key], counts
                )
            rows.append(counts if counts.device == device else counts.to(device))
            if nz is not None:
                nonzeros.append(nz if nz.device == device else nz.to(device))
        per_param = torch.stack(rows).to(acc)
        nnz = torch.stack(nonzeros).to(acc) if nonzero is None else nonzero.to(acc)
        if weight is not None:
            per_param = per_param * weight.reshape(-1, 1)
            nnz = nnz * weight
        by_layer = torch.zeros(n_layers, per_param.shape[1], dtype=acc, device=device).index_add_(0, idx, per_param)
        nnz_by_layer = torch.zeros(n_layers, dtype=acc, device=device).index_add_(0, idx, nnz)
        # Zeros share exponent field 0 with the subnormals: move them to their own column.
        zero = by_layer.sum(dim=1) - nnz_by_layer
        if mixed:
            out = by_layer
        else:
            (dtype,) = formats
            out = torch.zeros(n_layers, GRAD_HIST_BUCKETS, dtype=acc, device=device)
            out.index_add_(1, self.columns(dtype, device, scale), by_layer)
        out[:, 1] -= zero
        out[:, 0] += zero
        return out.reshape(-1)

    def _count(self, flat: torch.Tensor, nonzero: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(count per key, and when asked the count of non-zero values) of one flat gradient."""
        if flat.numel() <= CHUNK:
            key, n_keys = keys(flat)
            return count(key, n_keys, self.how), torch.count_nonzero(flat) if nonzero else None
        counts: torch.Tensor | None = None
        nz: torch.Tensor | None = None
        for start in range(0, flat.numel(), CHUNK):
            part = flat[start : start + CHUNK]
            key, n_keys = keys(part)
            c = count(key, n_keys, self.how)
            counts = c if counts is None else counts + c
            if nonzero:
                z = torch.count_nonzero(part)
                nz = z if nz is None else nz + z
        assert counts is not None
        return counts, nz
