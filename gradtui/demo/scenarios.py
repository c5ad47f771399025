"""Training scenarios: small, seeded setups that show the classic gradient failures and their cures.

Each `Scenario` builds a `ScenarioRun` (model, optimizer, data) that trains a few hundred steps in
seconds on a CPU. They back the scenario tests of the detectors and the chapters of `gradtui demo`.
Data comes only from scikit-learn's generators, the bundled `load_digits` and seeded NumPy draws:
nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from gradtui.demo.catalog import CATALOG, ScenarioInfo

Batch = tuple[torch.Tensor, torch.Tensor]


class Stepper(Protocol):
    """What a scenario needs from a monitor (`gradtui.watch(...)` returns one)."""

    def step(self, loss: Any) -> Any: ...


class ScenarioRun:
    """A ready-to-train setup: model, optimizer, optional scheduler, and a seeded batch stream.

    Args:
        model: The network, already on its device.
        optimizer: Its optimizer.
        loss_fn: `loss_fn(output, target) -> scalar tensor`.
        batches: Called once per step for the next `(input, target)` batch.
        scheduler: An LR scheduler stepped after every optimizer step, or None.
        clip: `("norm", t)` or `("value", t)`, applied here only when no monitor is given (a
            monitor applies the scenario's clipping itself through `watch_options`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        batches: Callable[[], Batch],
        scheduler: Any | None = None,
        clip: tuple[str, float] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_fn = loss_fn
        self.batches = batches
        self.clip = clip
        self.steps_done = 0

    @property
    def lanes(self) -> tuple[str, ...]:
        """Names of the activation-gradient lanes this setup can show (see `use_monitor_lanes`)."""
        if isinstance(self.model, _SeqClassifier) and self.model.lane_steps:
            return tuple(f"h[t={t}]" for t in self.model.lane_steps)
        return ()

    def use_monitor_lanes(self, lane: Callable[[int, torch.Tensor], torch.Tensor]) -> None:
        """Route the lanes' tensors through `lane` (a `Monitor.lane`) from now on."""
        if isinstance(self.model, _SeqClassifier):
            self.model.lane_fn = lane

    def train_step(self, mon: Stepper | None) -> float:
        """One full step: batch, forward, loss, backward, `mon.step(loss)`, optimizer and scheduler.

        Returns:
            The loss of this step as a float (NaN or inf once the run has blown up).
        """
        x, y = self.batches()
        self.model.train()
        loss = self.loss_fn(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if mon is not None:
            mon.step(loss)
        elif self.clip is not None:
            mode, threshold = self.clip
            if mode == "norm":
                nn.utils.clip_grad_norm_(self.model.parameters(), threshold)
            elif mode == "value":
                nn.utils.clip_grad_value_(self.model.parameters(), threshold)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.steps_done += 1
        return float(loss.item())


@dataclass(frozen=True, kw_only=True)
class Scenario(ScenarioInfo):
    """A scenario's description (`catalog.ScenarioInfo`) and the code that builds it."""

    build: Callable[[int, str], ScenarioRun]
    """`build(seed, device)` -> a ready-to-train setup."""


# ---------------------------------------------------------------- data


def _circles() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_circles

    x, y = make_circles(n_samples=1000, noise=0.1, factor=0.5, random_state=1)
    return x.astype(np.float32), y.astype(np.int64)


def _moons() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=1000, noise=0.1, random_state=0)
    x = (x - x.mean(0)) / x.std(0)
    return x.astype(np.float32), y.astype(np.int64)


def _regression() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=512, n_features=10, n_informative=8, noise=5.0, random_state=0)
    # Targets left unnormalised (std about 16) on purpose: big residuals make big gradients.
    return x.astype(np.float32), (0.1 * y).astype(np.float32)[:, None]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def _first_token_task(rng: np.random.Generator, n: int, length: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of random tokens; the target is the first token (a memory of `length` steps)."""
    tokens = rng.integers(0, vocab, size=(n, length))
    x = np.eye(vocab, dtype=np.float32)[tokens]
    return x, tokens[:, 0].astype(np.int64)


def _sampler(x: np.ndarray, y: np.ndarray, batch: int, seed: int, device: str) -> Callable[[], Batch]:
    """Seeded minibatches drawn with replacement from tensors kept on `device`."""
    xt = torch.as_tensor(x, device=device)
    yt = torch.as_tensor(y, device=device)
    gen = torch.Generator().manual_seed(seed + 1)
    n = xt.shape[0]
    if batch >= n:
        return lambda: (xt, yt)

    def next_batch() -> Batch:
        idx = torch.randint(0, n, (batch,), generator=gen).to(device)
        return xt[idx], yt[idx]

    return next_batch


# ---------------------------------------------------------------- models


def _init_linear(layer: nn.Linear, init: str) -> None:
    if init == "default":
        return
    if init == "normal0.05":
        nn.init.normal_(layer.weight, std=0.05)
    elif init == "he":
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    elif init == "he_uniform":
        nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
    elif init == "glorot":
        nn.init.xavier_uniform_(layer.weight)
    else:
        raise ValueError(f"unknown init {init!r}")
    nn.init.zeros_(layer.bias)


def _mlp(sizes: list[int], act: Callable[[], nn.Module], init: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        lin = nn.Linear(a, b)
        _init_linear(lin, init)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, norm: str, init: str = "default") -> None:
        super().__init__()
        self.norm: nn.Module = nn.LayerNorm(width) if norm == "layer" else nn.BatchNorm1d(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        _init_linear(self.fc1, init)
        _init_linear(self.fc2, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.fc2(torch.relu(self.fc1(self.norm(x))))
        return out


class _ResidualMLP(nn.Module):
    def __init__(self, n_in: int, width: int, depth: int, n_out: int, norm: str, init: str = "default") -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, width)
        _init_linear(self.inp, init)
        self.blocks = nn.Sequential(*[_ResidualBlock(width, norm, init) for _ in range(depth)])
        self.norm: nn.Module = nn.LayerNorm(width) if norm == "layer" else nn.BatchNorm1d(width)
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(torch.relu(self.norm(self.blocks(self.inp(x)))))
        return logits


class _SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 8, 8)
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        logits: torch.Tensor = self.head(x.flatten(1))
        return logits


class _SeqClassifier(nn.Module):
    def __init__(self, cell: str, n_in: int, hidden: int, n_out: int, carry_bias: float = 0.0) -> None:
        super().__init__()
        self.rnn: nn.Module
        if cell == "lstm":
            self.rnn = nn.LSTM(n_in, hidden, batch_first=True)
        elif cell == "gru":
            self.rnn = nn.GRU(n_in, hidden, batch_first=True)
        else:
            self.rnn = nn.RNN(n_in, hidden, nonlinearity="tanh", batch_first=True)
        if carry_bias and cell in ("lstm", "gru"):
            # Bias the forget (LSTM) or update (GRU) gate toward keeping the state: the usual init
            # for long memories. Both gates are the second block of the bias vectors.
            with torch.no_grad():
                self.rnn.get_parameter("bias_hh_l0")[hidden : 2 * hidden] = carry_bias
                self.rnn.get_parameter("bias_ih_l0")[hidden : 2 * hidden] = 0.0
        self.head = nn.Linear(hidden, n_out)
        self.cell = cell
        self.lane_fn: Callable[[int, torch.Tensor], torch.Tensor] | None = None
        """Set to `Monitor.lane` to measure dL/dh_t at the time steps in `lane_steps`."""
        self.lane_steps: tuple[int, ...] = ()

    def use_lanes(self, length: int, count: int = 12) -> tuple[str, ...]:
        """Choose `count` time steps, first and last included, to show as lanes; their names."""
        self.lane_steps = tuple(sorted({int(round(t)) for t in np.linspace(0, length - 1, count)}))
        return tuple(f"h[t={t}]" for t in self.lane_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lane_fn is None:
            out, _ = self.rnn(x)
            logits: torch.Tensor = self.head(out[:, -1])
            return logits
        unrolled: torch.Tensor = self.head(self._unrolled(x, self.lane_fn))
        return unrolled

    def _unrolled(self, x: torch.Tensor, lane: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        # The same cell kernels nn.RNN/LSTM/GRU run, one step at a time, so that the hidden
        # state of each time step is a tensor whose gradient can be measured.
        w = [self.rnn.get_parameter(n) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
        h = x.new_zeros(x.shape[0], self.head.in_features)
        c = torch.zeros_like(h)
        lanes = {t: i for i, t in enumerate(self.lane_steps)}
        for t in range(x.shape[1]):
            if self.cell == "lstm":
                h, c = torch._VF.lstm_cell(x[:, t], (h, c), *w)
            elif self.cell == "gru":
                h = torch._VF.gru_cell(x[:, t], h, *w)
            else:
                h = torch._VF.rnn_tanh_cell(x[:, t], h, *w)
            if t in lanes:
                h = lane(lanes[t], h)
        return h


def _seeded_model(seed: int, device: str, make: Callable[[], nn.Module]) -> nn.Module:
    # Fork the global RNG so that building a scenario leaves the caller's seed state alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    return model.to(device)


# ---------------------------------------------------------------- builders


def _classifier_run(
    seed: int,
    device: str,
    data: tuple[np.ndarray, np.ndarray],
    make: Callable[[], nn.Module],
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    batch: int,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    clip: tuple[str, float] | None = None,
) -> ScenarioRun:
    model = _seeded_model(seed, device, make)
    opt = optimizer(list(model.parameters()))
    return ScenarioRun(
        model,
        opt,
        nn.functional.cross_entropy,
        _sampler(*data, batch=batch, seed=seed, device=device),
        scheduler=scheduler(opt) if scheduler else None,
        clip=clip,
    )


def _sgd(lr: float, momentum: float = 0.0) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=momentum)


def _adam(lr: float) -> Callable[[list[nn.Parameter]], torch.optim.Optimizer]:
    return lambda params: torch.optim.Adam(params, lr=lr)


def _circles_mlp(act: Callable[[], nn.Module], init: str) -> Callable[[int, str], ScenarioRun]:
    def build(seed: int, device: str) -> ScenarioRun:
        return _classifier_run(
            seed, device, _circles(), lambda: _mlp([2, 32, 32, 32, 32, 2], act, init), _sgd(0.1, 0.9), batch=64
        )

    return build


def _regression_mlp(clip: tuple[str, float] | None) -> Callable[[int, str], ScenarioRun]:
    def build(seed: int, device: str) -> ScenarioRun:
        x, y = _regression()
        model = _seeded_model(seed, device, lambda: _mlp([10, 64, 64, 64, 64, 64, 1], nn.ReLU, "he_uniform"))
        opt = torch.optim.SGD(model.parameters(), lr=REGRESSION_LR)
        # A linear warm-up: the run trains for a few steps before the LR passes the stability limit.
        warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / REGRESSION_WARMUP))
        return ScenarioRun(
            model,
            opt,
            nn.functional.mse_loss,
            _sampler(x, y, batch=64, seed=seed, device=device),
            scheduler=warmup,
            clip=clip,
        )

    return build


class _NaiveSoftplus(nn.Module):
    """A linear layer and the textbook softplus, log(1 + exp(x)), in one module: exp overflows to Inf
    in float32 once its input passes about 88.7 (torch's `F.softplus` returns x above 20 for this)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        proto = nn.Linear(n_in, n_out)
        _init_linear(proto, "he_uniform")
        self.weight = proto.weight
        self.bias = proto.bias

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.log(1 + torch.exp(nn.functional.linear(h, self.weight, self.bias)))


def _softplus_overflow(seed: int, device: str) -> ScenarioRun:
    """The exploding regression MLP with a hand-written softplus before its output layer."""
    x, y = _regression()

    def make() -> nn.Module:
        trunk = _mlp([10, 64, 64, 64, 64], nn.ReLU, "he_uniform")
        head = nn.Linear(64, 1)
        _init_linear(head, "he_uniform")
        return nn.Sequential(*trunk, nn.ReLU(), _NaiveSoftplus(64, 64), head)

    model = _seeded_model(seed, device, make)
    opt = torch.optim.SGD(model.parameters(), lr=REGRESSION_LR)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, (t + 1) / REGRESSION_WARMUP))
    return ScenarioRun(model, opt, nn.functional.mse_loss, _sampler(x, y, batch=64, seed=seed, device=device), warmup)


REGRESSION_LR = 0.02
"""Plain SGD warmed up to this rate diverges on the unnormalised targets; clipped at 1.0 it trains."""
REGRESSION_WARMUP = 30


def _deep_linear(clip: tuple[str, float] | None) -> Callable[[int, str], ScenarioRun]:
    def build(seed: int, device: str) -> ScenarioRun:
        return _classifier_run(
            seed,
            device,
            _digits(),
            lambda: nn.Sequential(*[nn.Linear(64, 64) for _ in range(19)], nn.Linear(64, 10)),
            _adam(DEEP_LINEAR_LR),
            batch=128,
            clip=clip,
        )

    return build


DEEP_LINEAR_LR = 1e-2


def _residual(seed: int, device: str) -> ScenarioRun:
    return _classifier_run(
        seed, device, _digits(), lambda: _ResidualMLP(64, 128, 3, 10, "layer"), _adam(1e-3), batch=128
    )


def _cnn(seed: int, device: str) -> ScenarioRun:
    return _classifier_run(seed, device, _digits(), _SmallCNN, _adam(3e-3), batch=128)


def _seq_run(
    cell: str, length: int, lr: float, clip: tuple[str, float] | None = None, carry_bias: float = 0.0
) -> Callable[[int, str], ScenarioRun]:
    def build(seed: int, device: str) -> ScenarioRun:
        rng = np.random.default_rng(seed)
        data = _first_token_task(rng, 2000, length, vocab=4)
        run = _classifier_run(
            seed,
            device,
            data,
            lambda: _SeqClassifier(cell, 4, 32, 4, carry_bias),
            _adam(lr),
            batch=64,
            clip=clip,
        )
        if isinstance(run.model, _SeqClassifier):
            run.model.use_lanes(length)
        return run

    return build


def _deep_sigmoid(seed: int, device: str) -> ScenarioRun:
    return _classifier_run(
        seed, device, _digits(), lambda: _mlp([64] + [256] * 10 + [10], nn.Sigmoid, "default"), _adam(1e-3), batch=128
    )


def _deep_sigmoid_cure(seed: int, device: str) -> ScenarioRun:
    return _classifier_run(
        seed, device, _digits(), lambda: _ResidualMLP(64, 256, 5, 10, "batch", "glorot"), _adam(1e-3), batch=128
    )


def _high_lr(seed: int, device: str) -> ScenarioRun:
    return _classifier_run(seed, device, _digits(), _SmallCNN, _sgd(3.0, 0.9), batch=128)


def _optimizer_run(
    optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
) -> Callable[[int, str], ScenarioRun]:
    def build(seed: int, device: str) -> ScenarioRun:
        return _classifier_run(
            seed,
            device,
            _moons(),
            lambda: _mlp([2, 64, 64, 2], nn.ReLU, "he"),
            optimizer,
            batch=32,
            scheduler=scheduler,
        )

    return build


# ---------------------------------------------------------------- the library

_BUILDERS: dict[str, Callable[[int, str], ScenarioRun]] = {
    'sigmoid': _circles_mlp(nn.Sigmoid, "normal0.05"),
    'sigmoid-relu-he': _circles_mlp(nn.ReLU, "he"),
    'sigmoid-glorot': _circles_mlp(nn.Sigmoid, "glorot"),
    'relu-explode': _regression_mlp(None),
    'relu-explode-clip': _regression_mlp(("norm", 1.0)),
    'relu-explode-guard': _regression_mlp(None),
    'softplus-overflow': _softplus_overflow,
    'deep-linear': _deep_linear(None),
    'deep-linear-clip': _deep_linear(("norm", 1.0)),
    'residual-mlp': _residual,
    'cnn-bn': _cnn,
    'lstm': _seq_run("lstm", 6, 1e-2),
    'deep-sigmoid': _deep_sigmoid,
    'deep-sigmoid-cure': _deep_sigmoid_cure,
    'rnn-tanh': _seq_run("rnn", 70, 3e-3),
    'rnn-gru': _seq_run("gru", 70, 1e-2, ("norm", 1.0), carry_bias=3.0),
    'high-lr': _high_lr,
    'opt-sgd': _optimizer_run(_sgd(0.05)),
    'opt-momentum': _optimizer_run(_sgd(0.05, 0.9)),
    'opt-adam': _optimizer_run(_adam(1e-2)),
    'opt-step-lr': _optimizer_run(
            _sgd(0.1, 0.9), lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.1)
        ),
    'opt-exp-lr': _optimizer_run(
            _sgd(0.1, 0.9),
            lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=math.exp(math.log(0.01) / 300)),
        ),
}

SCENARIOS: dict[str, Scenario] = {
    name: Scenario(**{f.name: getattr(info, f.name) for f in fields(info)}, build=_BUILDERS[name])
    for name, info in CATALOG.items()
}
"""Every scenario by name, in tour order."""


def get(name: str) -> Scenario:
    """The scenario called `name`.

    Raises:
        ValueError: No scenario has that name; the message lists the valid names.
    """
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; valid names: {', '.join(SCENARIOS)}") from None


__all__ = ["SCENARIOS", "Scenario", "ScenarioRun", "Stepper", "get"]
