"""What `optimizer.step()` really used: the loop's own clipping seen from the optimizer's
post-step hook, and a word when `mon.step` sits in the wrong place.

Between `mon.step` and `optimizer.step()` a loop may unscale (GradScaler) and clip
(`clip_grad_norm_`): both multiply every gradient by one number. So the probe keeps the
squared norm of a few small gradients at `mon.step` and reads it again once the optimizer
has stepped: the ratio is that number, and the norm the optimizer stepped with is the
norm after gradtui's clipping times it. Exact for norm clipping and unscaling; for a
loop's elementwise (value) clipping it is the ratio on those few gradients. After the
step, not before: optimizers read the gradients without changing them, and with a
closure (`optimizer.step(closure)`, as Lightning steps) a pre-step hook runs before the
closure's backward and `mon.step`, a post-step hook after them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from gradtui.probe.stats import GradStats

log = logging.getLogger("gradtui")

SAMPLE_TENSORS = 3
"""Gradients re-measured after the step (the smallest ones: the check costs a few µs)."""
_SAME_NORM_STEPS = 3
CLIP_FIX = (
    "Call mon.step right after backward, before clip_grad_norm_, so it measures what backward produced (the "
    "loop's clipping is then measured as the stepped norm)"
)
"""What the "clipped already" warning tells a training loop to do (`Placement.clip_fix`)."""
SAME_NORM = 1e-6
"""Relative change under which two samples' global norms are the same (a clip's threshold, rounded)."""
LAYERS_MOVED = 1e-3
"""... and the change of some layer's norm, relative to the global norm, that says the gradients
moved under it (a thousand times what the total moved: no drift of a converging run does that)."""


def host_sq(views: Sequence[np.ndarray]) -> float:
    """The summed squared norm of CPU gradients through NumPy views of their memory (any layout: a
    flat copy made at `mon.step` would not see the loop change them after). Right after the optimizer
    step, which has streamed every parameter and its state through the caches, a torch call on a
    tiny tensor took 40-70 us there (`torch._foreach_norm`, `torch.stack`) and a NumPy dot about 10:
    on the 50x128 MLP the hook's three norms took 130 us through torch and 25 through NumPy. Both
    ends of the ratio are measured the same way, so an untouched gradient gives exactly 1."""
    total = 0.0
    for v in views:
        sq = float(np.vdot(v, v))  # flattened now: a view where the layout allows, else a copy of now
        if not math.isfinite(sq):  # a float32 sum of squares passes 3.4e38 for finite values of 1e19
            wide = v.astype(np.float64)
            sq = float(np.vdot(wide, wide))
        total += sq
    return total


class SteppedNorm:
    """Measures, for each step, the factor between the gradients at `mon.step` (after gradtui's
    clipping) and those `optimizer.step()` uses.

    Args:
        optimizers: The watched optimizers (their post-step hooks take the measurement).
        stats: The probe's statistics (parameters and norm helpers).
        on_factor: Called from the hook with the factor: a float where the host is the device, else a
            1-element accumulation-dtype tensor (read later, without a sync).
    """

    def __init__(
        self,
        optimizers: Sequence[torch.optim.Optimizer],
        stats: GradStats,
        on_factor: Callable[[torch.Tensor | float], None],
    ) -> None:
        self._stats = stats
        self._on_factor = on_factor
        self._armed: tuple[list[torch.Tensor], torch.Tensor, torch.Tensor] | None = None
        """Off the host: the gradients, their squared norm and the factor they carry, on the device."""
        self._armed_host: tuple[list[np.ndarray], float] | None = None
        """On the host: NumPy views of the gradients and their squared norm."""
        self._host = stats.fast_cpu
        """The host is the device: the gradients are read through NumPy views of their memory."""
        self._hooks = [opt.register_step_post_hook(self._after_step) for opt in optimizers]
        self._order: list[int] | None = None
        self._last: tuple[Sequence[int], list[int]] | None = None
        self._spent = 0.0

    def sample(self, which: Sequence[int]) -> list[int]:
        """The few parameters (of those with a gradient, `which`) that are re-measured."""
        if self._last is not None and self._last[0] is which:
            return self._last[1]  # `which` comes from the stats' per-pattern cache: same answer
        params = self._stats.params
        if self._order is None:
            self._order = sorted(range(len(params)), key=lambda i: params[i].numel())
        present = set(which)
        chosen = [i for i in self._order if i in present][:SAMPLE_TENSORS]
        self._last = (which, chosen)
        return chosen

    def arm(self, grads: list[torch.Tensor], grad_scale: torch.Tensor | None) -> None:
        """Remember `grads` (a few gradients as `mon.step` leaves them), their summed squared norm, and
        the factor the gradients carry now (a GradScaler's scale, None for 1)."""
        if self._host and grad_scale is None:
            views = [(g.detach() if g.requires_grad else g).numpy() for g in grads]
            self._armed_host = (views, host_sq(views))
            return
        before = self._stats.sq_norms(grads).sum().reshape(1)
        self._armed = (grads, before, grad_scale if grad_scale is not None else torch.ones_like(before))

    def disarm(self) -> None:
        self._armed = self._armed_host = None

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def take_spent(self) -> float:
        """Seconds the hook has taken since the last call (the probe's overhead budget counts them)."""
        spent, self._spent = self._spent, 0.0
        return spent

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._armed_host is None and self._armed is None:
            return
        began = time.perf_counter()
        if self._armed_host is not None:
            views, before = self._armed_host
            self._armed_host = None
            self._on_factor(math.sqrt(host_sq(views) / before) if before > 0 else math.nan)
        elif self._armed is not None:
            grads, sq, grad_scale = self._armed
            self._armed = None
            self._on_factor((self._stats.sq_norms(grads).sum().reshape(1) / sq).sqrt() * grad_scale)
        self._spent += time.perf_counter() - began


class Placement:
    """Warns once when `mon.step` sees gradients a loop has already unscaled or clipped."""

    def __init__(self, warn: Callable[[str], None]) -> None:
        self._warn = warn
        self.clip_fix = CLIP_FIX
        """The "clipped already" warning's advice: a framework callback words it with its own option."""
        self._said: set[str] = set()
        self._last = math.nan
        self._last_layers: np.ndarray | None = None
        self._same = 0

    def unscaled(self) -> None:
        self._once(
            "unscaled",
            "gradtui: mon.step(loss, scaler=...) was called after scaler.unscale_(): call it right after "
            "backward, before unscale_ and clip_grad_norm_, so it measures what backward produced; gradtui "
            "never touches the scaler itself",
        )

    def global_norm(self, norm: float, layer_norms: np.ndarray) -> None:
        """Fold in one sampled step's global norm before clipping and its per-layer norms.

        A loop's clip_grad_norm_ before mon.step leaves every step's norm at its threshold while the
        gradients themselves change: one factor scales them all, so the layers' shares of the norm
        move with each batch. A run that has converged, or steps too little to change its gradients
        (LBFGS near its minimum, SGD at a small rate on a fixed batch), keeps its norm steady too,
        but with its layers' norms as steady: only a steady total over moving layers is clipping.
        """
        layers = np.asarray(layer_norms, np.float64)
        steady = norm > 0 and math.isfinite(norm) and abs(norm - self._last) <= SAME_NORM * norm
        moved = False
        if steady and self._last_layers is not None and self._last_layers.shape == layers.shape:
            with np.errstate(invalid="ignore"):
                change = np.abs(layers - self._last_layers)
            moved = bool(np.nanmax(change, initial=0.0) >= LAYERS_MOVED * norm)
        self._same = self._same + 1 if steady and moved else 0
        self._last = norm
        self._last_layers = layers
        if self._same + 1 >= _SAME_NORM_STEPS:
            self._once(
                "clipped",
                f"gradtui: mon.step has seen the same global gradient norm ({norm:.6g}) for {_SAME_NORM_STEPS} "
                f"steps while its layers' norms changed: the gradients look clipped already. {self.clip_fix}",
            )

    def _once(self, key: str, text: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning("%s", text)
            self._warn(text)
