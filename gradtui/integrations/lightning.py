"""Lightning callback: `Trainer(callbacks=[GradTUICallback(record="run.gtr")])`.

Where Lightning's hooks fall (lightning 2.x): `training_step` returns the loss, which
automatic optimization divides by `accumulate_grad_batches` before `on_before_backward` and
backward; once per optimizer step (after the last micro-batch, and after unscaling under
16-bit mixed precision) `on_before_optimizer_step`, then Lightning's clipping
(`gradient_clip_val`, in `configure_gradient_clipping`), then the update. Manual optimization
calls `on_before_backward` from `manual_backward` (undivided) and `on_before_optimizer_step`
at each `optimizer.step()`.
"""

from __future__ import annotations

from typing import Any

import torch

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # pragma: no cover - depends on what is installed
    raise ImportError("gradtui's Lightning callback needs Lightning: pip install 'gradtui[lightning]'") from None

from gradtui.integrations._runs import run_kwargs
from gradtui.probe.monitor import Monitor
from gradtui.probe.watch import watch

CLIP_FIX = (
    "With Lightning, clip with GradTUICallback(clip=(\"norm\", ...)), which clips after measuring, not in "
    "training_step (self.clip_gradients before optimizer.step() in manual optimization); in automatic "
    "optimization Trainer(gradient_clip_val=...) also clips after gradtui measures"
)
"""The advice of the monitor's "clipped already" warning under this callback."""


class GradTUICallback(Callback):
    """Watch a LightningModule's gradients; keyword arguments go to `gradtui.watch`.

    `gradtui.watch` runs at each `fit` (`on_fit_start`), with every optimizer of the trainer
    (`trainer.optimizers`: learning-rate commands name them `opt0`, `opt1`, ... when there
    are several), and `mon.step` at each optimizer step, in `on_before_optimizer_step`: so in
    manual optimization with several optimizers (a GAN) each optimizer's step is a step of
    its own, showing the gradients that step is about to use.

    Loss: the mean of the losses backpropagated since the previous optimizer step, as
    `training_step` returned them: automatic optimization's division by
    `accumulate_grad_batches` and a GradScaler's scaling are undone.

    Clipping: Lightning clips (`gradient_clip_val`) after `on_before_optimizer_step`, so the
    statistics are those backward produced, and `StepStats.stepped_norm` shows Lightning's
    clipping. Nothing of the trainer is changed. Gradients clipped before that (manual
    optimization's `self.clip_gradients` ahead of `optimizer.step()`) reach gradtui clipped;
    `clip=` given here clips after measuring instead.

    Each `fit` is a run of its own: `self.monitor` is the latest one, and from the second on
    the record file and run name are numbered (`run.gtr`, `run-2.gtr`, ...).
    """

    def __init__(self, **watch_kwargs: Any) -> None:
        super().__init__()
        self.watch_kwargs = watch_kwargs
        self.monitor: Monitor | None = None
        """The latest run's monitor."""
        self.runs = 0
        """How many `fit` runs this callback has watched."""
        self._losses: list[torch.Tensor] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_run("error", "the previous fit did not end (an exception?)")
        self.monitor = watch(pl_module, list(trainer.optimizers), **run_kwargs(self.watch_kwargs, self.runs + 1))
        self.monitor.placement.clip_fix = CLIP_FIX
        self.runs += 1

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        if self.monitor is None or self.monitor.closed:
            return
        value = loss.detach().float()
        scale = _loss_scale(trainer)
        if scale is not None:
            value = value / scale.to(value.device)
        if pl_module.automatic_optimization:
            value = value * trainer.accumulate_grad_batches
        self._losses.append(value.reshape(()))

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.monitor is None or self.monitor.closed:
            return
        loss = torch.stack(self._losses).mean() if self._losses else None
        self._losses.clear()
        self.monitor.step(loss)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_run("ok", "")

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "error"
        self._end_run(status, f"{type(exception).__name__}: {exception}")

    def _end_run(self, status: str, error: str) -> None:
        self._losses.clear()
        if self.monitor is not None and not self.monitor.closed:
            self.monitor.close(status, error)


def _loss_scale(trainer: Trainer) -> torch.Tensor | None:
    """The GradScaler's scale the loss given to `on_before_backward` carries (16-bit mixed precision)."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    if scaler is None or not getattr(scaler, "is_enabled", lambda: False)():
        return None
    scale = getattr(scaler, "_scale", None)  # a device tensor: reading it costs no sync
    return scale.detach().reshape(()) if isinstance(scale, torch.Tensor) else None
