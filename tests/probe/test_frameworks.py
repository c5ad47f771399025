"""The framework callbacks against the frameworks' own values.

Hugging Face: the loss the Trainer logs (gradient accumulation, label smoothing), its
pre-clip gradient norm, the learning rate its linear schedule sets and the one the optimizer
used, its arguments untouched. Lightning: the training_step losses, what its clipping leaves,
a LambdaLR warm-up, manual optimization with two optimizers. Tiny models, built from configs.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import gradtui
from gradtui.model.events import LogLine, RunEnd, RunStart, StepStats, UpdateStats
from gradtui.probe.monitor import Monitor
from gradtui.wire.record import read_record

STEPS = 32
CUT_AT = 20
"""The step an LR factor of 0.1 is sent at (it holds from then on)."""


def _steps(mon: Monitor | None) -> tuple[list[Any], list[StepStats]]:
    assert mon is not None and mon.events is not None
    events = mon.events.drain()
    return events, [e for e in events if isinstance(e, StepStats)]


# ---------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def hf() -> Any:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return transformers


def _logged(hf: Any, expected: Any) -> Any:
    """The Trainer's logged loss, to compare with: transformers < 5 rounds it to 4 decimals."""
    if int(hf.__version__.split(".")[0]) >= 5:
        return pytest.approx(expected, rel=1e-5)
    return pytest.approx(expected, abs=5.1e-5)


def _gpt2(hf: Any) -> nn.Module:
    torch.manual_seed(0)
    config = hf.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=32)
    model: nn.Module = hf.GPT2LMHeadModel(config)
    return model


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 512, length: int = 16) -> None:
        self.ids = torch.randint(0, 64, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _hf_args(hf: Any, out: Path, **kw: Any) -> Any:
    base: dict[str, Any] = dict(
        output_dir=str(out), per_device_train_batch_size=2, report_to=[], use_cpu=True, save_strategy="no",
        disable_tqdm=True, learning_rate=1e-3, max_grad_norm=0.5,
    )
    base.update(kw)
    return hf.TrainingArguments(**base)


@pytest.mark.usefixtures("every_step_sampling")  # counts sampled steps
def test_hf_loss_lr_and_clipping_are_the_trainers(hf: Any, tmp_path: Path) -> None:
    from gradtui.integrations.huggingface import GradTUICallback

    used: list[tuple[tuple[float, ...], float]] = []  # what each optimizer.step() used: LRs, grad norm
    seen_clip: list[float] = []

    class Probe(hf.TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any) -> None:
            def pre_step(opt: torch.optim.Optimizer, a: Any, k: Any) -> None:
                grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
                norm = float(torch.nn.utils.get_total_norm(grads))
                used.append((tuple(float(g["lr"]) for g in opt.param_groups), norm))

            optimizer.optimizer.register_step_pre_hook(pre_step)  # inside accelerate's wrapper

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == CUT_AT:  # gradtui's step CUT_AT is the Trainer's step CUT_AT + 1
                assert cb.monitor is not None
                cb.monitor.send(gradtui.SetLR(factor=0.1))

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            seen_clip.append(args.max_grad_norm)  # after gradtui's own callback (listed first)

    cb = GradTUICallback(queue=True, detectors=False, record=tmp_path / "run.gtr")
    args = _hf_args(
        hf, tmp_path, max_steps=STEPS, gradient_accumulation_steps=4, label_smoothing_factor=0.1, logging_steps=1,
    )
    before = args.to_dict()
    trainer = hf.Trainer(model=_gpt2(hf), args=args, train_dataset=_Tokens(), callbacks=[cb, Probe()])
    assert trainer.label_smoother is not None  # the loss is the Trainer's: the model's output has none
    trainer.train()

    assert cb.loss_source in ("trainer", "trainer-local")  # the latter: transformers < 5
    assert args.to_dict() == before  # max_grad_norm was 0 only inside each step, and is back
    assert seen_clip == [0.5] * STEPS  # the user's value once the Trainer's clipping point is passed
    events, steps = _steps(cb.monitor)
    logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    assert [s.step for s in steps] == list(range(STEPS)) and len(logs) == len(used) == STEPS
    for s, h, (lrs, stepped) in zip(steps, logs, used, strict=True):
        # the loss the Trainer logs: the accumulated batch's mean (not 1/4 of it), label-smoothed
        assert s.loss == _logged(hf, h["loss"])
        # pre-clip statistics: the Trainer's logged grad_norm is also taken before clipping
        # (transformers < 5 logs none while its clipping is off)
        if int(hf.__version__.split(".")[0]) >= 5:
            assert s.global_norm == pytest.approx(h["grad_norm"], rel=1e-5)
        assert s.clip_mode == "norm" and s.clip_threshold == 0.5
        assert s.stepped_norm == pytest.approx(stepped, rel=1e-5)
        assert stepped == pytest.approx(min(s.global_norm, 0.5), rel=1e-5)
        # the schedule's LR is what the Trainer logs; the optimizer used it times the override
        factor = 0.1 if s.step >= CUT_AT else 1.0
        assert s.schedule_lrs == pytest.approx((h["learning_rate"],) * 2, rel=1e-9)
        assert lrs == pytest.approx(tuple(lr * factor for lr in s.schedule_lrs), rel=1e-9)
        assert s.lrs == pytest.approx(lrs, rel=1e-9)
    assert any(s.clipped for s in steps)
    # the linear schedule kept its shape under the override: at step 30 it is at 2/32 of the peak
    assert steps[30].schedule_lrs[0] == pytest.approx(1e-3 * 2 / STEPS, rel=1e-9)
    assert used[30][0][0] == pytest.approx(1e-3 * 2 / STEPS * 0.1, rel=1e-9)
    assert isinstance(events[-1], RunEnd) and events[-1].status == "ok"
    recorded = [e for e in read_record(tmp_path / "run.gtr").events if isinstance(e, StepStats)]
    assert [e.loss for e in recorded] == [s.loss for s in steps]


def test_hf_train_twice_and_after_a_crash(hf: Any, tmp_path: Path) -> None:
    from gradtui.integrations.huggingface import GradTUICallback

    class Crash(hf.TrainerCallback):
        armed = True

        def on_substep_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.armed and state.global_step == 2:  # inside a step: max_grad_norm is 0 now
                self.armed = False
                raise RuntimeError("boom")

    cb = GradTUICallback(queue=True, detectors=False, record=tmp_path / "run.gtr")
    args = _hf_args(hf, tmp_path, max_steps=4, gradient_accumulation_steps=2, logging_steps=1)
    before = args.to_dict()
    trainer = hf.Trainer(model=_gpt2(hf), args=args, train_dataset=_Tokens(64), callbacks=[cb, Crash()])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert args.max_grad_norm == 0.0  # no callback runs after an exception: put back at the next train
    crashed = cb.monitor
    trainer.train()  # restores, closes the crashed run, records to a numbered file
    assert args.to_dict() == before
    assert crashed is not None and crashed.closed and cb.monitor is not crashed
    trainer.train()  # and a third time: each train() starts the Trainer's state afresh
    assert args.to_dict() == before and cb.runs == 3
    first, second, third = (read_record(tmp_path / name).events for name in ("run.gtr", "run-2.gtr", "run-3.gtr"))
    assert isinstance(first[-1], RunEnd) and first[-1].status == "error" and "on_train_end" in first[-1].error
    assert len([e for e in first if isinstance(e, StepStats)]) == 2
    for events in (second, third):
        assert isinstance(events[-1], RunEnd) and events[-1].status == "ok"
        assert len([e for e in events if isinstance(e, StepStats)]) == 4
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h and "step" in h]  # the last train's
    assert [e.loss for e in third if isinstance(e, StepStats)] == _logged(hf, logged)


def test_hf_without_take_over_the_statistics_are_before_the_trainers_clipping(hf: Any, tmp_path: Path) -> None:
    """take_over_clipping=False: the Trainer clips, and the record's norm before clipping is the one the
    Trainer logs (its pre-clip `grad_norm`), not the clipped one; its clipping shows as the stepped norm."""
    from gradtui.integrations.huggingface import GradTUICallback

    cb = GradTUICallback(take_over_clipping=False, queue=True, record=tmp_path / "run.gtr")
    args = _hf_args(hf, tmp_path, max_steps=24, logging_steps=1, max_grad_norm=0.3, gradient_accumulation_steps=2)
    before = args.to_dict()
    trainer = hf.Trainer(model=_gpt2(hf), args=args, train_dataset=_Tokens(), callbacks=[cb])
    trainer.train()

    assert args.to_dict() == before and "clip_grad_norm_" not in vars(trainer.accelerator)  # all put back
    logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    logged_norm = np.array([h["grad_norm"] for h in logs])
    assert len(logs) == 24 and (logged_norm > 0.45).sum() > 12  # the Trainer's clipping acted
    run = gradtui.load(tmp_path / "run.gtr")
    assert run.run_steps.tolist() == list(range(24))
    assert run.loss == _logged(hf, [h["loss"] for h in logs])
    measured = run.norm_measured
    assert measured[run.sampled].all() and run.sampled.sum() >= 3
    assert run.global_norm[measured] == pytest.approx(logged_norm[measured], rel=1e-5)
    # what the optimizer stepped with: the Trainer's clipping of that norm; gradtui itself did not clip
    assert run.stepped_norm == pytest.approx(np.minimum(logged_norm[run.steps], 0.3), rel=1e-4)
    events, steps = _steps(cb.monitor)
    assert all(s.clip_mode == "off" for s in steps)
    assert not [e for e in events if isinstance(e, LogLine) and "clipped" in e.text]


def test_hf_trainer_clipping_its_own_way_is_said_with_the_callbacks_option(
    hf: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Trainer that clips without its accelerator: gradtui measures after the clipping, and the
    warnings say so with the fix a callback user has (take_over_clipping=True), not a loop's."""
    from gradtui.integrations.huggingface import GradTUICallback

    class OwnClipping(hf.Trainer):  # type: ignore[misc]
        def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
            return torch.nn.utils.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)

    cb = GradTUICallback(take_over_clipping=False, queue=True, detectors=False)
    args = _hf_args(hf, tmp_path, max_steps=12, logging_steps=1, max_grad_norm=0.05)
    trainer = OwnClipping(model=_gpt2(hf), args=args, train_dataset=_Tokens(64), callbacks=[cb])
    with caplog.at_level(logging.WARNING, logger="gradtui"):
        trainer.train()

    assert all(h["grad_norm"] > 0.05 for h in trainer.state.log_history if "grad_norm" in h)  # clipped each step
    said = [r.getMessage() for r in caplog.records if "before gradtui can measure" in r.getMessage()]
    assert len(said) == 1 and "GradTUICallback(take_over_clipping=True)" in said[0]
    events, _ = _steps(cb.monitor)
    clipped = [e.text for e in events if isinstance(e, LogLine) and "look clipped already" in e.text]
    assert len(clipped) == 1
    assert "GradTUICallback(take_over_clipping=True)" in clipped[0] and "before clip_grad_norm_" not in clipped[0]


# ---------------------------------------------------------------- Lightning


@pytest.fixture(scope="module")
def pl() -> Any:
    return pytest.importorskip("lightning.pytorch")


def _pl_trainer(pl: Any, callbacks: list[Any], **kw: Any) -> Any:
    return pl.Trainer(
        callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", **kw,
    )


def _regression(n: int = 256) -> Any:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(n, 4, generator=g), 3 * torch.randn(n, 1, generator=g))
    return torch.utils.data.DataLoader(data, batch_size=4)


def _regressor(pl: Any, warmup: int = 10) -> Any:
    class Regressor(pl.LightningModule):
        """Records each training_step loss, the pre-clip norm, and what Lightning's clipping leaves."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
            self.losses: list[float] = []
            self.pre_clip: list[float] = []
            self.used: list[tuple[tuple[float, ...], float]] = []

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
            x, y = batch
            loss: torch.Tensor = nn.functional.mse_loss(self.net(x), y)
            self.losses.append(float(loss.detach()))
            return loss

        def _norm(self) -> float:
            return float(torch.nn.utils.get_total_norm([p.grad for p in self.parameters() if p.grad is not None]))

        def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
            self.pre_clip.append(self._norm())  # after the callbacks' hook: after mon.step

        def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                        gradient_clip_algorithm: Any = None) -> None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            # Lightning's clipping is the last thing before the update: this is what the step uses
            self.used.append((tuple(float(g["lr"]) for g in optimizer.param_groups), self._norm()))

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.2)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return Regressor()


@pytest.mark.usefixtures("every_step_sampling")  # counts sampled steps
def test_lightning_loss_clipping_schedule_and_lr_override(pl: Any) -> None:
    from gradtui.integrations.lightning import GradTUICallback

    class Cut(pl.Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
            if trainer.global_step == CUT_AT and idx % 4 == 0:
                assert cb.monitor is not None
                cb.monitor.send(gradtui.SetLR(factor=0.1))

    cb = GradTUICallback(queue=True, detectors=False)
    module = _regressor(pl)
    trainer = _pl_trainer(pl, [cb, Cut()], max_steps=STEPS, accumulate_grad_batches=4, gradient_clip_val=0.5)
    trainer.fit(module, _regression())

    events, steps = _steps(cb.monitor)
    assert [s.step for s in steps] == list(range(STEPS))
    assert len(module.losses) == 4 * STEPS and len(module.used) == STEPS
    for s in steps:
        window = module.losses[4 * s.step : 4 * s.step + 4]
        # the training_step losses, not the 1/4 Lightning backpropagates under accumulation
        assert s.loss == pytest.approx(sum(window) / 4, rel=1e-5)
        assert s.global_norm == pytest.approx(module.pre_clip[s.step], rel=1e-5)  # before Lightning clips
        assert s.clip_mode == "off"
        lrs, _ = module.used[s.step]
        warm = 0.2 * min(1.0, (s.step + 1) / 10)  # the LambdaLR warm-up, as Lightning steps it
        factor = 0.1 if s.step >= CUT_AT else 1.0
        assert s.schedule_lrs == pytest.approx((warm,), rel=1e-9)
        assert lrs == pytest.approx((warm * factor,), rel=1e-9)
        assert s.lrs == pytest.approx(lrs, rel=1e-9)
    # the norm the optimizer stepped with is what Lightning's clipping left, the last step's too
    # (Lightning steps with optimizer.step(closure): mon.step runs inside the step)
    for s in steps:
        assert s.stepped_norm == pytest.approx(module.used[s.step][1], rel=1e-5)
    assert sum(s.global_norm > 0.5 for s in steps) > STEPS // 2  # Lightning really clipped
    assert steps[30].lrs == pytest.approx((0.02,), rel=1e-9)  # the factor holds 10 steps later
    assert isinstance(events[-1], RunEnd) and events[-1].status == "ok"


def test_lightning_last_step_has_its_stepped_norm(pl: Any) -> None:
    """optimizer.step(closure): the pre-step hook runs before backward and mon.step, so the stepped
    norm must be taken after them, the last step's included."""
    from gradtui.integrations.lightning import GradTUICallback

    cb = GradTUICallback(queue=True, detectors=False)
    module = _regressor(pl)
    _pl_trainer(pl, [cb], max_steps=3, gradient_clip_val=0.5).fit(module, _regression(32))
    _, steps = _steps(cb.monitor)
    assert steps[-1].stepped_norm == pytest.approx(module.used[-1][1], rel=1e-5)


def test_lightning_update_ratio_is_of_its_own_step(pl: Any) -> None:
    """optimizer.step(closure): the update ratio reported for step k is step k's (detail_every=2)."""
    from gradtui.integrations.lightning import GradTUICallback

    cb = GradTUICallback(queue=True, detectors=False, detail_every=2)
    module = _regressor(pl, warmup=1)
    ratios: list[float] = []

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer: Any, m: Any, batch: Any, idx: int) -> None:
            self.before = [p.detach().clone() for p in m.net[0].parameters()]

        def on_train_batch_end(self, trainer: Any, m: Any, outputs: Any, batch: Any, idx: int) -> None:
            after = list(m.net[0].parameters())
            d2 = sum(float(((a.detach() - b) ** 2).sum()) for a, b in zip(after, self.before, strict=True))
            ratios.append(math.sqrt(d2 / sum(float((b**2).sum()) for b in self.before)))

    _pl_trainer(pl, [cb, Watch()], max_steps=4).fit(module, _regression(32))
    assert cb.monitor is not None and cb.monitor.events is not None
    updates = [e for e in cb.monitor.events.drain() if isinstance(e, UpdateStats)]
    assert [u.step for u in updates] == [0, 2]
    for u in updates:
        assert u.update_ratio[0] == pytest.approx(ratios[u.step], rel=1e-4)


@pytest.mark.usefixtures("every_step_sampling")  # counts sampled steps
def test_lightning_manual_optimization_two_optimizers(pl: Any) -> None:
    from gradtui.integrations.lightning import GradTUICallback

    class GAN(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            torch.manual_seed(0)
            self.gen = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 4))
            self.disc = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
            self.losses: list[float] = []
            self.used: list[tuple[float, ...]] = []

        def training_step(self, batch: tuple[torch.Tensor], idx: int) -> None:
            (real,) = batch
            opt_d, opt_g = self.optimizers()
            z = torch.randn(real.shape[0], 2)
            self.toggle_optimizer(opt_d)
            fake = self.gen(z).detach()
            d_loss = nn.functional.softplus(-self.disc(real)).mean() + nn.functional.softplus(self.disc(fake)).mean()
            self.manual_backward(d_loss)
            opt_d.step()
            opt_d.zero_grad()
            self.untoggle_optimizer(opt_d)
            self.toggle_optimizer(opt_g)
            g_loss = nn.functional.softplus(-self.disc(self.gen(z))).mean()
            self.manual_backward(g_loss)
            opt_g.step()
            opt_g.zero_grad()
            self.untoggle_optimizer(opt_g)
            self.losses += [float(d_loss.detach()), float(g_loss.detach())]

        def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
            self.used.append(tuple(float(g["lr"]) for g in optimizer.param_groups))

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.disc.parameters(), lr=0.1), torch.optim.Adam(self.gen.parameters(), lr=1e-3)]

    class Halve(pl.Callback):
        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
            if idx == 2:
                assert cb.monitor is not None
                cb.monitor.send(gradtui.SetLR(optimizer=1, factor=0.5))

    cb = GradTUICallback(queue=True, detectors=False)
    module = GAN()
    data = torch.utils.data.TensorDataset(torch.randn(64, 4, generator=torch.Generator().manual_seed(1)))
    trainer = _pl_trainer(pl, [cb, Halve()], max_steps=12)  # Lightning counts each optimizer's steps
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))

    events, steps = _steps(cb.monitor)
    start = events[0]
    assert isinstance(start, RunStart) and start.lr_groups == ("opt0.0", "opt1.0") and start.lrs == (0.1, 1e-3)
    assert cb.monitor is not None and len(cb.monitor.optimizers) == 2
    assert len(steps) == 12 == len(module.losses)  # each optimizer's step is a step of its own
    gen = np.array([name.startswith("gen") for name in cb.monitor.layer_names])
    for s in steps:
        assert s.loss == pytest.approx(module.losses[s.step], rel=1e-6)  # the loss that step backpropagated
        d_step = s.step % 2 == 0
        assert (s.has_grad == ~gen).all() if d_step else (s.has_grad == gen).all()  # that step's gradients
        halved = s.step >= 4
        assert s.lrs == pytest.approx((0.1, 1e-3 * (0.5 if halved else 1.0)), rel=1e-9)
        assert s.schedule_lrs == pytest.approx((0.1, 1e-3), rel=1e-9)
        assert module.used[s.step] == pytest.approx((s.lrs[0],) if d_step else (s.lrs[1],), rel=1e-9)
    assert isinstance(events[-1], RunEnd) and events[-1].status == "ok"


def test_lightning_fit_twice_and_after_an_exception(pl: Any, tmp_path: Path) -> None:
    from gradtui.integrations.lightning import GradTUICallback

    cb = GradTUICallback(detectors=False, record=tmp_path / "run.gtr")
    _pl_trainer(pl, [cb], max_steps=3).fit(_regressor(pl), _regression(32))

    class Boom(pl.Callback):
        def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, idx: int) -> None:
            if idx == 1:
                raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        _pl_trainer(pl, [cb, Boom()], max_steps=3).fit(_regressor(pl), _regression(32))
    _pl_trainer(pl, [cb], max_steps=2).fit(_regressor(pl), _regression(32))

    assert cb.runs == 3
    ends = []
    for name, n in (("run.gtr", 3), ("run-2.gtr", 2), ("run-3.gtr", 2)):
        events = read_record(tmp_path / name).events
        assert len([e for e in events if isinstance(e, StepStats)]) == n
        assert isinstance(events[-1], RunEnd)
        ends.append(events[-1])
    assert [e.status for e in ends] == ["ok", "error", "ok"] and "boom" in ends[1].error
    assert all(math.isfinite(s.loss) for s in read_record(tmp_path / "run-3.gtr").events if isinstance(s, StepStats))


def test_lightning_clipping_before_the_callback_is_said_with_the_callbacks_option(pl: Any) -> None:
    """Manual optimization that clips before optimizer.step(): gradtui sees clipped gradients, and the
    warning names what a Lightning user can do (GradTUICallback(clip=...)), not a plain loop's fix."""
    from gradtui.integrations.lightning import GradTUICallback

    class Clipped(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> None:
            opt = self.optimizers()
            x, y = batch
            self.manual_backward(nn.functional.mse_loss(self.net(x), y))
            self.clip_gradients(opt, gradient_clip_val=1e-3, gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=1e-3)

    cb = GradTUICallback(queue=True, detectors=False)
    _pl_trainer(pl, [cb], max_steps=8).fit(Clipped(), _regression(64))
    events, steps = _steps(cb.monitor)
    assert all(s.global_norm == pytest.approx(1e-3, rel=1e-4) for s in steps)  # clipped before it saw them
    clipped = [e.text for e in events if isinstance(e, LogLine) and "look clipped already" in e.text]
    assert len(clipped) == 1
    assert "GradTUICallback(clip=" in clipped[0] and "before clip_grad_norm_" not in clipped[0]


@pytest.mark.parametrize("max_grad_norm", [math.inf, 1e20])
def test_hf_a_max_grad_norm_that_never_clips_stays_the_trainers(hf: Any, tmp_path: Path, max_grad_norm: float) -> None:
    """`max_grad_norm=inf` (or one as high): the Trainer then logs its gradient norm and never clips.
    gradtui cannot clip by it, so it leaves it to the Trainer (training must not stop over it) and
    records the norms the Trainer logs."""
    from gradtui.integrations.huggingface import GradTUICallback

    cb = GradTUICallback(queue=True, record=tmp_path / "run.gtr")
    args = _hf_args(hf, tmp_path, max_steps=8, logging_steps=1, max_grad_norm=max_grad_norm)
    trainer = hf.Trainer(model=_gpt2(hf), args=args, train_dataset=_Tokens(), callbacks=[cb])
    trainer.train()

    assert args.max_grad_norm == max_grad_norm
    logs = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    run = gradtui.load(tmp_path / "run.gtr")
    assert run.run_steps.tolist() == list(range(8))
    measured = run.norm_measured
    assert measured.sum() >= 3
    assert run.global_norm[measured] == pytest.approx(np.array([h["grad_norm"] for h in logs])[measured], rel=1e-5)
    _, steps = _steps(cb.monitor)
    assert all(s.clip_mode == "off" for s in steps)
