"""Hugging Face Trainer callback: `Trainer(..., callbacks=[GradTUICallback(record="run.gtr")])`.

Where the Trainer's hooks fall in one optimizer step (transformers 5, `Trainer._run_epoch`):
`on_step_begin`, then forward and backward of each micro-batch (what `training_step` returns
is added to `trainer._tr_loss`), the Trainer's clipping (`max_grad_norm`) and its gradient
norm for the logs, `on_pre_optimizer_step`, `optimizer.step()`, the scheduler, `on_step_end`,
then logging (which reads `_tr_loss` and sets it back to 0, then `on_log`).
"""

from __future__ import annotations

import logging
import sys
from types import FrameType
from typing import Any

import torch
from torch import nn

try:
    from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "gradtui's Hugging Face callback needs transformers: pip install 'gradtui[huggingface]'"
    ) from None

from gradtui.integrations._runs import run_kwargs
from gradtui.model.commands import SetClip, validate
from gradtui.probe.monitor import Monitor
from gradtui.probe.watch import watch

log = logging.getLogger("gradtui")

_STACK_DEPTH = 32
"""How far up the call stack `on_train_begin` looks for the Trainer calling it."""
CLIP_FIX = (
    "With the Hugging Face Trainer, use GradTUICallback(take_over_clipping=True) (the default): gradtui then "
    "measures first and clips by norm with the Trainer's max_grad_norm"
)
"""The advice of the monitor's "clipped already" warning under this callback."""


class GradTUICallback(TrainerCallback):
    """Watch a Trainer's model; keyword arguments go to `gradtui.watch`.

    `gradtui.watch` runs at each `trainer.train()` (`on_train_begin`) and `mon.step` once per
    optimizer step, in `on_pre_optimizer_step`: after the last micro-batch's backward, before
    `optimizer.step()`. Learning-rate commands act on top of the Trainer's scheduler (its
    logged "learning_rate" stays the schedule's). The Trainer's logs are otherwise unchanged
    (transformers < 5 logs no "grad_norm" while gradtui does the clipping).

    Loss: the value the Trainer logs for the step (`log_history`'s "loss" with `logging_steps=1`):
    the sum over the step's micro-batches of what `training_step` returned, so the mean loss of
    the accumulated batch (with label smoothing, the smoothed loss the Trainer computes itself).
    The Trainer keeps that sum in `trainer._tr_loss`; callbacks are not given the Trainer, so
    at train begin this one finds the Trainer whose callbacks it is among on the call stack,
    or uses the one given with `attach(trainer)` / `trainer=`. Fallback, with a warning, when
    there is none or it keeps no such sum (transformers < 5 keeps it in a local variable of
    `_inner_training_loop`, which is read instead): the loss in the model's output, averaged
    over the step's micro-batches. That differs from the Trainer's where the model normalises
    by the tokens of the whole accumulated batch (then it is about 1/accumulation of it) and is
    missing with label smoothing (the Trainer takes the labels out of the model's inputs). The
    Trainer logs a non-finite micro-batch loss as the running mean instead
    (`logging_nan_inf_filter`); so does gradtui, whose detectors still see the non-finite gradients.

    Clipping: the Trainer clips (`max_grad_norm`, 1.0 by default) before `on_pre_optimizer_step`,
    which would hide the gradients backward produced. With `take_over_clipping=True` (the
    default) gradtui clips by norm with the same threshold instead (a `clip=` given here wins),
    so the statistics are taken before clipping and the threshold can be changed live. For this
    the callback sets `args.max_grad_norm = 0` from `on_step_begin` to `on_pre_optimizer_step`
    of each step only, so checkpoints save the user's value; it is put back at train end, and
    at the next train begin when a `train()` ended in an exception. With
    `take_over_clipping=False` the Trainer keeps its clipping, and `mon.step` runs just before
    it: the Trainer's accelerator's `clip_grad_norm_` (which it clips with, and no callback
    event precedes) is wrapped for the run, so the statistics are still those before clipping
    and the Trainer's clipping shows as the stepped norm. Where the Trainer clips some other
    way (or was not found), `mon.step` runs at `on_pre_optimizer_step`, after its clipping,
    and a warning says so.

    Mixed precision (fp16): transformers 5 unscales the gradients (for its gradient norm) before
    `on_pre_optimizer_step`, so they are measured in true units and the loss scale is not shown;
    where they are still scaled (transformers < 5 with its clipping off) the Trainer's GradScaler
    is handed to `mon.step`, which measures and clips in true units and shows the scale.

    Each `train()` is a run of its own: `self.monitor` is the latest one, and from the second on
    the record file and run name are numbered (`run.gtr`, `run-2.gtr`, ...).
    """

    def __init__(
        self, *, trainer: Trainer | None = None, take_over_clipping: bool = True, **watch_kwargs: Any
    ) -> None:
        self.watch_kwargs = watch_kwargs
        self.take_over_clipping = take_over_clipping
        self.trainer = trainer
        """The Trainer to read the loss from (None: the one calling `on_train_begin`)."""
        self.monitor: Monitor | None = None
        """The latest run's monitor."""
        self.runs = 0
        """How many `train()` runs this callback has watched."""
        self.loss_source = ""
        """Where this run's loss comes from: "trainer", "trainer-local" (transformers < 5) or "model"."""
        self._args: TrainingArguments | None = None
        self._saved: dict[str, Any] = {}
        """TrainingArguments fields changed now, with the user's values."""
        self._clip_norm: float | None = None
        self._trainer: Trainer | None = None
        """The Trainer of this run, when known."""
        self._tr_loss: Any = None
        """Returns the Trainer's running loss sum (a tensor), or None: no such sum is known."""
        self._baseline: torch.Tensor | None = None
        self._losses: list[torch.Tensor] = []
        self._hook: Any = None
        self._accelerator: Any = None
        """The accelerator whose `clip_grad_norm_` is wrapped for this run (take_over_clipping=False)."""
        self._armed = False
        """This step's `mon.step` may run just before the Trainer's clipping."""
        self._stepped = False
        """This step's `mon.step` ran before the Trainer's clipping."""
        self._trainer_clips: float | None = None
        """The Trainer's own `max_grad_norm` when it clips (take_over_clipping=False), else None."""

    def attach(self, trainer: Trainer) -> GradTUICallback:
        """Read the loss from `trainer` (adding this callback to it when it is not there yet)."""
        self.trainer = trainer
        if not any(cb is self for cb in trainer.callback_handler.callbacks):
            trainer.add_callback(self)
        return self

    # ------------------------------------------------------------ events

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._end_run("error", "the previous train() did not reach on_train_end (an exception?)")
        model: nn.Module = kwargs["model"]
        kw = run_kwargs(self.watch_kwargs, self.runs + 1)
        clip_norm = args.max_grad_norm
        take = self.take_over_clipping and clip_norm is not None and clip_norm > 0
        refused = validate(SetClip("norm", clip_norm), 0) if take else None
        if refused is not None:
            # A threshold set so high that it never clips (inf: the Trainer logs its norm then) stays
            # the Trainer's: gradtui measures before it, and training goes on as the loop asked.
            log.info("gradtui: the Trainer keeps its clipping (max_grad_norm=%s): %s", clip_norm, refused)
            take = False
        if take:
            kw.setdefault("clip", ("norm", float(clip_norm)))
        self.monitor = watch(model, kwargs.get("optimizer"), **kw)
        self.runs += 1
        self._args = args
        self._clip_norm = float(clip_norm) if take else None
        if take:
            log.info("gradtui: clipping by norm %s moved from the Trainer to gradtui", clip_norm)
        self.monitor.placement.clip_fix = CLIP_FIX
        self._trainer_clips = float(clip_norm) if not take and clip_norm is not None and clip_norm > 0 else None
        self._find_loss(model)
        if self._trainer_clips is not None:
            self._measure_before_clipping()
        self._mark()

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.monitor is None:
            return
        if self._clip_norm is not None:
            self._change("max_grad_norm", 0.0)
        self._armed = self._accelerator is not None
        self._mark()

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._restore()  # the Trainer's clipping is behind us
        self._armed = False
        if self._stepped:
            self._stepped = False  # measured before the Trainer clipped
            return
        if self._trainer_clips is not None:
            self._warn_after_clipping()
        self._step()

    def _step(self) -> None:
        if self.monitor is None or self.monitor.closed:
            return
        self.monitor.step(self._step_loss(), scaler=_scaler_if_scaled(self._trainer, self.monitor.optimizer))
        self._mark()

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._mark()  # logging may have set the Trainer's sum back to 0

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._end_run("ok", "")

    # ------------------------------------------------------------ the loss

    def _find_loss(self, model: nn.Module) -> None:
        trainer, frame = self._calling_trainer()
        self._trainer = trainer
        if trainer is not None and isinstance(getattr(trainer, "_tr_loss", None), torch.Tensor):
            self._tr_loss = lambda: getattr(trainer, "_tr_loss", None)
            self.loss_source = "trainer"
        elif frame is not None and isinstance(frame.f_locals.get("tr_loss"), torch.Tensor):
            self._tr_loss = lambda: frame.f_locals.get("tr_loss")  # transformers < 5: a local of the loop
            self.loss_source = "trainer-local"
        else:
            self._tr_loss = None
            self.loss_source = "model"
            log.warning(
                "gradtui: the Trainer running this callback was not found (pass it with "
                "GradTUICallback(...).attach(trainer)); the loss shown is the model's own output loss, "
                "which can differ from the Trainer's under gradient accumulation and is missing with "
                "label smoothing"
            )
            self._hook = model.register_forward_hook(self._capture_loss)

    def _calling_trainer(self) -> tuple[Trainer | None, FrameType | None]:
        """The Trainer (given, or calling this callback) and the frame of its training loop."""
        trainer = self.trainer
        frame: FrameType | None = sys._getframe(1)
        for _ in range(_STACK_DEPTH):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if isinstance(owner, Trainer) and (owner is trainer or (trainer is None and self._called_by(owner))):
                trainer = owner
                if frame.f_code.co_name == "_inner_training_loop":
                    return trainer, frame
            frame = frame.f_back
        return trainer, None

    def _called_by(self, trainer: Trainer) -> bool:
        handler = getattr(trainer, "callback_handler", None)
        return any(cb is self for cb in getattr(handler, "callbacks", ()))

    def _mark(self) -> None:
        """Remember the Trainer's running sum now: the next step's loss is what it adds to it."""
        current = self._tr_loss() if self._tr_loss is not None else None
        self._baseline = current.detach().clone() if isinstance(current, torch.Tensor) else None

    def _step_loss(self) -> torch.Tensor | None:
        if self._tr_loss is None:
            loss = torch.stack(self._losses).float().mean() if self._losses else None
            self._losses.clear()
            return loss
        current = self._tr_loss()
        if not isinstance(current, torch.Tensor):
            return None
        base = self._baseline
        if base is None or base.shape != current.shape or base.device != current.device:
            return current.detach().clone()
        return current.detach() - base

    def _capture_loss(self, module: nn.Module, inputs: Any, output: Any) -> None:
        loss = getattr(output, "loss", None)
        if loss is None and isinstance(output, dict):
            loss = output.get("loss")
        if isinstance(loss, torch.Tensor) and loss.numel() == 1 and module.training:
            self._losses.append(loss.detach())

    # ------------------------------------------------------------ the Trainer's own clipping

    def _measure_before_clipping(self) -> None:
        """Run `mon.step` right before the Trainer clips (take_over_clipping=False): its clipping
        goes through `accelerator.clip_grad_norm_` after the last micro-batch's backward."""
        accelerator = getattr(self._trainer, "accelerator", None)
        original = getattr(accelerator, "clip_grad_norm_", None)
        if accelerator is None or not callable(original):
            return

        def clip_grad_norm_(*args: Any, **kwargs: Any) -> Any:
            if self._armed:
                self._armed = False
                self._stepped = True
                self._step()
            return original(*args, **kwargs)

        accelerator.clip_grad_norm_ = clip_grad_norm_
        self._accelerator = accelerator

    def _unwrap_clipping(self) -> None:
        accelerator, self._accelerator = self._accelerator, None
        if accelerator is not None and "clip_grad_norm_" in vars(accelerator):
            del accelerator.clip_grad_norm_  # the accelerator's own method again
        self._armed = self._stepped = False

    def _warn_after_clipping(self) -> None:
        """Once a run: this step is measured after the Trainer's clipping (it did not clip through
        the accelerator, or the Trainer was not found)."""
        self._trainer_clips, norm = None, self._trainer_clips
        log.warning(
            "gradtui: the Trainer clips (max_grad_norm=%s) before gradtui can measure the gradients, so its "
            "statistics are those after the Trainer's clipping, not what backward produced. %s",
            norm,
            CLIP_FIX,
        )

    # ------------------------------------------------------------ the Trainer's arguments

    def _change(self, name: str, value: Any) -> None:
        if self._args is None:
            return
        if name not in self._saved:
            self._saved[name] = getattr(self._args, name)
        setattr(self._args, name, value)

    def _restore(self) -> None:
        if self._args is not None:
            for name, value in self._saved.items():
                setattr(self._args, name, value)
        self._saved.clear()

    def _end_run(self, status: str, error: str) -> None:
        """Put the Trainer's arguments back and close this run's monitor (if still open)."""
        self._restore()
        self._unwrap_clipping()
        self._trainer_clips = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._trainer = None
        self._tr_loss = None
        self._baseline = None
        self._losses.clear()
        self._clip_norm = None
        if self.monitor is not None and not self.monitor.closed:
            self.monitor.close(status, error)


def _scaler_if_scaled(trainer: Any, optimizer: torch.optim.Optimizer | None) -> Any:
    """The Trainer's GradScaler while the gradients still carry its scale (else None: they are in
    true units already, or there is none)."""
    scaler = getattr(getattr(trainer, "accelerator", None), "scaler", None)
    if scaler is None or optimizer is None or not getattr(scaler, "is_enabled", lambda: False)():
        return None
    from torch.amp.grad_scaler import OptState

    # Read only: .get() on the scaler's defaultdict adds nothing to it.
    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer))
    return scaler if state is None or state["stage"] is OptState.READY else None
