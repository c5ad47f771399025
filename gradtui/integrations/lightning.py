"""Lightning callback: `Trainer(callbacks=[GradTUICallback(record="run.gtr")])`."""

from __future__ import annotations

from typing import Any

import torch

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError:  # pragma: no cover - depends on what is installed
    raise ImportError("gradtui's Lightning callback needs Lightning: pip install 'gradtui[lightning]'") from None

from gradtui.probe.monitor import Monitor, watch


class GradTUICallback(Callback):
    """Watch a LightningModule's gradients; keyword arguments go to `gradtui.watch`.

    Lightning calls `on_before_optimizer_step` after backward (and after unscaling under
    mixed precision), once per optimizer step, gradient accumulation included. The
    loss shown is the mean of the losses backpropagated since the last optimizer step.
    """

    def __init__(self, **watch_kwargs: Any) -> None:
        super().__init__()
        self.watch_kwargs = watch_kwargs
        self.monitor: Monitor | None = None
        self._losses: list[torch.Tensor] = []

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        self.monitor = watch(pl_module, optimizer, **self.watch_kwargs)

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.monitor is None:
            return
        loss = torch.stack(self._losses).mean() if self._losses else None
        self._losses.clear()
        self.monitor.step(loss)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.monitor is not None:
            self.monitor.close()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self.monitor is not None:
            status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "error"
            self.monitor.close(status, f"{type(exception).__name__}: {exception}")
