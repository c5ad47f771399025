"""Mixed precision without touching the user's GradScaler: the statistics are computed from the
scaled gradients and the scale (norms scale linearly, so they come out exact), and clipping
works on scaled gradients with the threshold times the scale. The user's own `unscale_`,
`clip_grad_norm_` and `scaler.step` then work unchanged wherever `mon.step` sits between
backward and the optimizer step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


def grad_scale(
    scaler: Any, optimizers: Sequence[torch.optim.Optimizer], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
    """(the factor the gradients carry now, the loss scale), both 1-element tensors on `device`,
    and whether the scaler had already unscaled them; None without an enabled scaler."""
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
    return factor, scale, unscaled
