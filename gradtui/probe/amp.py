"""Mixed precision without touching the user's GradScaler: the statistics are computed from the
scaled gradients and the scale (norms scale linearly, so they come out exact), and clipping
works on scaled gradients with the threshold times the scale. The user's own `unscale_`,
`clip_grad_norm_` and `scaler.step` then work unchanged wherever `mon.step` sits between
backward and the optimizer step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch


class AmpScale(NamedTuple):
    """What a GradScaler means for this step's gradients."""

    factor: torch.Tensor
    """The factor the gradients carry now (1 once the scaler unscaled them), 1 element on the device."""
    scale: torch.Tensor
    """The scaler's loss scale, 1 element on the device."""
    unscaled: bool
    """The scaler had already unscaled the gradients (the loop called `unscale_` before `mon.step`)."""


def grad_scale(
    scaler: Any, optimizers: Sequence[torch.optim.Optimizer], device: torch.device, dtype: torch.dtype
) -> AmpScale | None:
    """What an enabled scaler means for this step's gradients; None without one."""
    if scaler is None or not getattr(scaler, "is_enabled", lambda: False)():
        return None
    if not optimizers:
        raise ValueError("step(scaler=...) needs the optimizer: pass it to watch(model, optimizer)")
    from torch.amp.grad_scaler import OptState

    # Read only: .get() on the scaler's defaultdict adds no state of ours to it.
    state = scaler._per_optimizer_states.get(id(optimizers[0]))
    unscaled = state is not None and state["stage"] is not OptState.READY
    raw = scaler._scale if scaler._scale is not None else torch.tensor(math.nan)
    scale = raw.detach().to(device, dtype).reshape(1)
    factor = torch.ones(1, dtype=dtype, device=device) if unscaled else scale
    return AmpScale(factor, scale, unscaled)


FUSED_CHECK_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def any_nonfinite(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """True (a 0-dim bool tensor on `device`, no host read) if a value of `tensors` is NaN or infinite.

    GradScaler's own fused check (`_amp_foreach_non_finite_check_and_unscale_`), with a scale
    of 1, which leaves every value as it was (x * 1.0 is exact): one kernel per device and
    dtype, 3-7x faster than the squared norms on a 2-core CPU (0.18 vs 1.2 ms for a 50x128
    MLP's 102 gradients), as fast where one large tensor dominates. Sparse or other tensors
    are checked one by one.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    rest: list[torch.Tensor] = []
    for t in tensors:
        if t.is_sparse or t.dtype not in FUSED_CHECK_DTYPES:
            rest.append(t)
        else:
            groups.setdefault((t.device, t.dtype), []).append(t)
    flags = []
    for (dev, _), group in groups.items():
        flag = torch.zeros(1, dtype=torch.float32, device=dev)
        torch._amp_foreach_non_finite_check_and_unscale_(group, flag, torch.ones(1, dtype=torch.float32, device=dev))
        flags.append(flag if dev == device else flag.to(device))
    for t in rest:
        values = t.coalesce().values() if t.is_sparse else t
        flags.append(torch.isfinite(values).all().logical_not().reshape(1).to(device, torch.float32))
    if not flags:
        return torch.zeros((), dtype=torch.bool, device=device)
    return (flags[0] if len(flags) == 1 else torch.cat(flags).sum()) > 0
