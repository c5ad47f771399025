"""Mixed precision: the statistics describe the true gradients, so a GradScaler's are unscaled
first (as for clipping), and its loss scale and skipped steps are recorded."""

from __future__ import annotations

import math
from typing import Any

import torch


def unscale(
    scaler: Any, optimizer: torch.optim.Optimizer | None, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Unscale gradients in place if the scaler has not yet; (found_inf, scale) on `device`,
    or None without an enabled scaler."""
    if scaler is None or not getattr(scaler, "is_enabled", lambda: False)():
        return None
    if optimizer is None:
        raise ValueError("step(scaler=...) needs the optimizer: pass it to watch(model, optimizer)")
    from torch.amp.grad_scaler import OptState

    state = scaler._per_optimizer_states[id(optimizer)]
    if state["stage"] is OptState.READY:
        scaler.unscale_(optimizer)
    found = list(state["found_inf_per_device"].values())
    found_inf = (
        torch.stack([f.to(device, dtype) for f in found]).sum()
        if found
        else torch.zeros((), dtype=dtype, device=device)
    )
    scale = scaler._scale if scaler._scale is not None else torch.tensor(math.nan)
    return found_inf.reshape(1), scale.detach().to(device, dtype).reshape(1)
