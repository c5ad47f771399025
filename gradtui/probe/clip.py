"""Clipping on the device with no host sync: by global L2 norm (as `clip_grad_norm_`) or
elementwise by value (as `clip_grad_value_`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gradtui.model.commands import SetClip, validate
from gradtui.probe.layers import by_device

_EPS = 1e-6  # as in torch.nn.utils.clip_grad_norm_


def check_clip(clip: tuple[str, float] | None) -> tuple[str, float]:
    """(mode, threshold) from `watch(clip=...)`; raises ValueError with the reason a viewer's command would get."""
    if clip is None:
        return "off", 1.0
    if not (isinstance(clip, tuple) and len(clip) == 2):
        raise ValueError(f"clip must be None or a (mode, threshold) tuple such as ('norm', 1.0), got {clip!r}")
    mode, threshold = clip
    reason = validate(SetClip(mode=mode, threshold=threshold), 0)
    if reason is not None:
        raise ValueError(reason)
    return mode, float(threshold)


def clip_grads(
    grads: list[torch.Tensor],
    mode: str,
    threshold: float,
    total: torch.Tensor | None,
    global_norm: Callable[[], torch.Tensor],
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Clip `grads` in place; returns the global norm after clipping (a 1-element tensor).

    Args:
        grads: The gradients (values of sparse ones, local shards of sharded ones).
        mode: "norm" or "value".
        threshold: Max global norm, or max |value|.
        total: The global norm before clipping when already known (saves a pass).
        global_norm: Computes the global norm of `grads` now (across ranks when distributed), in
            true units.
        scale: The factor the gradients carry (a GradScaler's scale, not yet unscaled): norms are
            in true units, so a value threshold is scaled by it and a norm coefficient needs nothing.
    """
    if mode == "norm":
        if total is None:
            total = global_norm()
        coef = torch.clamp(threshold / (total + _EPS), max=1.0)
        for dev_grads in by_device(grads):
            torch._foreach_mul_(dev_grads, coef.to(dev_grads[0].device, dev_grads[0].dtype))
        return (total * coef).reshape(1)
    if scale is None:
        for dev_grads in by_device(grads):
            torch._foreach_clamp_min_(dev_grads, -threshold)
            torch._foreach_clamp_max_(dev_grads, threshold)
    else:
        bound = scale.reshape(()) * threshold  # stays on the device: no host sync
        for g in grads:
            b = bound.to(g.device, g.dtype)
            g.clamp_(min=-b, max=b)
    return global_norm().reshape(1)
