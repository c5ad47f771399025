"""Lightning and Hugging Face callbacks train a few steps and report real statistics."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from gradtui.model.events import RunEnd, StepStats


def test_lightning_callback_trains_and_reports() -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from gradtui.integrations.lightning import GradTUICallback

    class Module(pl.LightningModule):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
            x, y = batch
            loss: torch.Tensor = nn.functional.mse_loss(self.net(x), y)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    cb = GradTUICallback(queue=True, detectors=False, detail_every=1)
    trainer = pl.Trainer(
        max_steps=6, callbacks=[cb], accumulate_grad_batches=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )
    trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=4))
    assert cb.monitor is not None and cb.monitor.events is not None
    events = cb.monitor.events.drain()
    steps = [e for e in events if isinstance(e, StepStats)]
    assert len(steps) == 6  # one per optimizer step, accumulation included
    assert cb.monitor.layer_names == ["net.0", "net.2"]
    assert all(math.isfinite(s.loss) and s.loss > 0 for s in steps)
    assert all(np.isfinite(s.grad_norm).all() and (s.grad_norm > 0).all() for s in steps)
    assert isinstance(events[-1], RunEnd) and events[-1].status == "ok"


def test_huggingface_callback_trains_and_takes_over_clipping(tmp_path: object) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from gradtui.integrations.huggingface import GradTUICallback

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.fc(x)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    class Data(torch.utils.data.Dataset):
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(0)
            self.x, self.y = torch.randn(16, 4, generator=g), torch.randint(0, 2, (16,), generator=g)

        def __len__(self) -> int:
            return 16

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"x": self.x[i], "labels": self.y[i]}

    cb = GradTUICallback(queue=True, detectors=False)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, report_to=[], use_cpu=True,
        save_strategy="no", logging_strategy="no", max_grad_norm=0.5,
    )
    trainer = transformers.Trainer(model=Model(), args=args, train_dataset=Data(), callbacks=[cb])
    trainer.train()
    assert cb.monitor is not None and cb.monitor.events is not None
    steps = [e for e in cb.monitor.events.drain() if isinstance(e, StepStats)]
    assert len(steps) == 4
    assert args.max_grad_norm == 0.5  # put back: the Trainer's clipping is off only inside each step
    assert all(s.clip_mode == "norm" and s.clip_threshold == 0.5 for s in steps)
    assert all(math.isfinite(s.loss) for s in steps)
    for s in steps:  # gradtui clipped: what it measured is the pre-clip norm
        assert s.clipped_norm == pytest.approx(min(s.global_norm, 0.5), rel=1e-4)


def test_huggingface_attach_and_the_fallback_without_a_trainer(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from gradtui.integrations.huggingface import GradTUICallback

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.fc(x)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True,
        save_strategy="no", logging_steps=1, disable_tqdm=True,
    )
    data = [{"x": torch.randn(4), "labels": torch.tensor(i % 2)} for i in range(8)]
    trainer: Any = transformers.Trainer(model=Model(), args=args, train_dataset=data)
    cb = GradTUICallback(queue=True, detectors=False).attach(trainer)
    assert cb.attach(trainer) is cb
    assert sum(c is cb for c in trainer.callback_handler.callbacks) == 1  # added once
    trainer.train()
    assert cb.loss_source in ("trainer", "trainer-local") and cb.trainer is trainer

    # Called by no Trainer: the model's own loss, averaged over the step's micro-batches, with a warning.
    lone = GradTUICallback(queue=True, detectors=False)
    model = Model()
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    with caplog.at_level("WARNING", logger="gradtui"):
        lone.on_train_begin(args, state, control, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    assert lone.loss_source == "model" and "was not found" in caplog.text
    lone.on_step_begin(args, state, control)
    assert args.max_grad_norm == 0.0  # the Trainer's clipping is off inside the step
    x, y = torch.randn(4, 4), torch.tensor([0, 1, 0, 1])
    losses = []
    for _ in range(2):
        out = model(x=x, labels=y)
        out["loss"].backward()
        losses.append(float(out["loss"].detach()))
    lone.on_pre_optimizer_step(args, state, control)
    assert args.max_grad_norm == 1.0
    lone.on_train_end(args, state, control)
    assert lone.monitor is not None and lone.monitor.events is not None
    steps = [e for e in lone.monitor.events.drain() if isinstance(e, StepStats)]
    assert [s.loss for s in steps] == pytest.approx([sum(losses) / 2], rel=1e-6)


def test_numbered_runs(tmp_path: Path) -> None:
    from gradtui.integrations._runs import run_kwargs

    kw = {"record": tmp_path / "run.gtr", "run": "exp", "queue": True}
    assert run_kwargs(kw, 1) == kw
    assert run_kwargs(kw, 2) == {"record": tmp_path / "run-2.gtr", "run": "exp-2", "queue": True}
    (tmp_path / "run-2.gtr").write_bytes(b"")
    assert run_kwargs(kw, 2)["record"] == tmp_path / "run-3.gtr"  # never an earlier run's file
    assert run_kwargs({**kw, "overwrite": True}, 2)["record"] == tmp_path / "run-2.gtr"
    folder = f"{tmp_path}/runs/"
    assert run_kwargs({"record": folder}, 2) == {"record": folder}  # the folder names its files
    assert run_kwargs({}, 3) == {}


def test_huggingface_hands_the_scaler_only_while_gradients_are_scaled() -> None:
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from gradtui.integrations.huggingface import _scaler_if_scaled

    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer = SimpleNamespace(accelerator=SimpleNamespace(scaler=scaler))
    scaler.scale(model(torch.randn(3, 4)).sum()).backward()
    assert _scaler_if_scaled(trainer, opt) is scaler  # transformers < 5 with its clipping off
    scaler.unscale_(opt)  # transformers 5 always does, for its gradient norm
    assert _scaler_if_scaled(trainer, opt) is None
    off = SimpleNamespace(accelerator=SimpleNamespace(scaler=torch.amp.GradScaler("cpu", enabled=False)))
    assert _scaler_if_scaled(off, opt) is None
    assert _scaler_if_scaled(SimpleNamespace(accelerator=SimpleNamespace(scaler=None)), opt) is None
    assert _scaler_if_scaled(None, opt) is None
