"""Hugging Face Trainer callback: `Trainer(..., callbacks=[GradTUICallback(record="run.gtr")])`."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "gradtui's Hugging Face callback needs transformers: pip install 'gradtui[huggingface]'"
    ) from None

from gradtui.probe.monitor import Monitor, watch

log = logging.getLogger("gradtui")


class GradTUICallback(TrainerCallback):
    """Watch a Trainer's model; keyword arguments go to `gradtui.watch`.

    The Trainer clips gradients (`max_grad_norm`, 1.0 by default) before its
    `on_pre_optimizer_step` event, which would hide the gradients backward produced. With
    `take_over_clipping=True` (the default) the callback sets `max_grad_norm=0` and
    clips by norm with the same threshold itself, so the statistics are taken before
    clipping and clipping can be changed live from the viewer.
    """

    def __init__(self, *, take_over_clipping: bool = True, **watch_kwargs: Any) -> None:
        self.watch_kwargs = watch_kwargs
        self.take_over_clipping = take_over_clipping
        self.monitor: Monitor | None = None
        self._losses: list[torch.Tensor] = []
        self._hook: Any = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        model: nn.Module = kwargs["model"]
        kw = dict(self.watch_kwargs)
        if self.take_over_clipping and args.max_grad_norm and args.max_grad_norm > 0 and "clip" not in kw:
            kw["clip"] = ("norm", float(args.max_grad_norm))
            log.info("gradtui: clipping by norm %s moved from the Trainer to gradtui", args.max_grad_norm)
            args.max_grad_norm = 0.0
        self.monitor = watch(model, kwargs.get("optimizer"), **kw)
        # The Trainer gives callbacks no loss: take it from the model's output.
        self._hook = model.register_forward_hook(self._capture_loss)

    def _capture_loss(self, module: nn.Module, inputs: Any, output: Any) -> None:
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1 and module.training:
            self._losses.append(loss.detach())

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.monitor is None:
            return
        loss = torch.stack(self._losses).float().mean() if self._losses else None
        self._losses.clear()
        self.monitor.step(loss)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None:
            self.monitor.close()
