"""Clipping on the device with no host sync: by global L2 norm (as `clip_grad_norm_`),
elementwise by value (as `clip_grad_value_`), or adaptively ("auto", `ZClip`): by norm, at a
threshold the run's own recent norms set."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gradtui.model.commands import SetClip, validate
from gradtui.model.guard import ZCLIP_ALPHA, ZCLIP_EPS, ZCLIP_MIN_CV, ZCLIP_WARMUP
from gradtui.probe.layers import by_device

_EPS = ZCLIP_EPS


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


class ZClip:
    """Adaptive clipping by z-score (as ZClip, Kumar et al. 2025): the threshold is
    mean + z * std of an exponential moving average of the recent global norms, so it follows
    the run as its norms drift (a percentile of the whole history, as AutoClip, keeps
    clipping to the early large norms long after they have shrunk, and needs the history).

    The rule is `gradtui.model.guard.zclip_step`, here on the device: the moving mean,
    variance and count are tensors, updated with the norm after clipping (a spike does not
    inflate its own threshold); a norm that is not finite, or 0, leaves them as they were (25
    zero-gradient steps would otherwise leave a threshold of 0 for good). The standard
    deviation's floor (`ZCLIP_MIN_CV` of the mean) keeps a run of equal norms from pinning the
    threshold to the mean, which clipped norms feeding the average could then never raise.
    """

    def __init__(self) -> None:
        self._seen: torch.Tensor | None = None
        self._mean: torch.Tensor | None = None
        self._var: torch.Tensor | None = None

    @property
    def seen(self) -> int:
        """Norms in the statistics so far (a host read: for tests, never on the step)."""
        return int(self._seen) if self._seen is not None else 0

    def coefficient(self, total: torch.Tensor, z: float) -> torch.Tensor:
        """The factor to scale the gradients by this step (<= 1), given their global norm."""
        total = total.reshape(())
        if self._mean is None or self._var is None or self._seen is None:
            zero = torch.zeros_like(total)
            self._mean, self._var, self._seen = zero, zero, zero
        mean, var, seen = self._mean, self._var, self._seen
        warm = seen < ZCLIP_WARMUP
        sd = torch.maximum(var.clamp(min=0).sqrt(), ZCLIP_MIN_CV * mean)
        coef = torch.where(warm, torch.ones_like(total), torch.clamp((mean + z * sd) / (total + _EPS), max=1.0))
        alpha = torch.where(warm, seen / (seen + 1), torch.full_like(total, ZCLIP_ALPHA))  # a plain mean while warming
        clipped = total * coef
        ok = torch.isfinite(clipped) & (clipped > 0)
        delta = clipped - mean
        self._mean = torch.where(ok, mean + (1 - alpha) * delta, mean)
        self._var = torch.where(ok, alpha * (var + (1 - alpha) * delta * delta), var)
        self._seen = seen + ok.to(seen.dtype)
        return coef


def clip_grads(
    grads: list[torch.Tensor],
    mode: str,
    threshold: float,
    total: torch.Tensor | None,
    global_norm: Callable[[], torch.Tensor],
    scale: torch.Tensor | None = None,
    auto: ZClip | None = None,
) -> torch.Tensor:
    """Clip `grads` in place; returns the global norm after clipping (a 1-element tensor).

    Args:
        grads: The gradients (values of sparse ones, local shards of sharded ones).
        mode: "norm", "value" or "auto".
        threshold: Max global norm, max |value|, or (auto) the z-score past which a norm is clipped.
        total: The global norm before clipping when already known (saves a pass).
        global_norm: Computes the global norm of `grads` now (across ranks when distributed), in
            true units.
        scale: The factor the gradients carry (a GradScaler's scale, not yet unscaled): norms are
            in true units, so a value threshold is scaled by it and a norm coefficient needs nothing.
        auto: The moving statistics of the "auto" mode.
    """
    if mode in ("norm", "auto"):
        if total is None:
            total = global_norm()
        if mode == "auto":
            if auto is None:
                raise ValueError("adaptive clipping needs its moving statistics (auto=ZClip())")
            coef = auto.coefficient(total, threshold)
        else:
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
