"""Training scenarios: small, seeded setups that show the classic gradient failures and their cures.

Each `Scenario` builds a `ScenarioRun` (model, optimizer, data) that trains a few hundred steps in
seconds on a CPU. They back the scenario tests of the detectors and the chapters of `gradtui demo`.
Data comes only from scikit-learn's generators, the bundled `load_digits` and seeded NumPy draws:
nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

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


@dataclass(frozen=True)
class Scenario:
    """A named training setup, for the tests and a chapter of the demo."""

    name: str
    title: str
    """Short, for a header."""
    blurb: str
    """One line, for `gradtui demo --list`."""
    narrative: str
    """A few short paragraphs for the side panel: what to look at, which key to press."""
    steps: int
    """Default number of steps."""
    build: Callable[[int, str], ScenarioRun]
    """`build(seed, device)` -> a ready-to-train setup."""
    watch_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Extra keyword arguments for `gradtui.watch(...)`, e.g. `{"clip": ("norm", 1.0)}`."""
    chapter: str = ""
    """Groups a failure with its cures in the demo ("vanishing", "exploding", ...)."""


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
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class _ResidualMLP(nn.Module):
    def __init__(self, n_in: int, width: int, depth: int, n_out: int, norm: str, init: str = "default") -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, width)
        _init_linear(self.inp, init)
        self.blocks = nn.Sequential(*[_ResidualBlock(width, norm, init) for _ in range(depth)])
        self.norm: nn.Module = nn.LayerNorm(width) if norm == "layer" else nn.BatchNorm1d(width)
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.blocks(self.inp(x)))))


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
        return self.head(x.flatten(1))


class _SeqClassifier(nn.Module):
    def __init__(self, cell: str, n_in: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.rnn: nn.Module
        if cell == "lstm":
            self.rnn = nn.LSTM(n_in, hidden, batch_first=True)
        elif cell == "gru":
            self.rnn = nn.GRU(n_in, hidden, batch_first=True)
        else:
            self.rnn = nn.RNN(n_in, hidden, nonlinearity="tanh", batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


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


def _seq_run(cell: str, length: int, lr: float, clip: tuple[str, float] | None = None) -> Callable[[int, str], ScenarioRun]:
    def build(seed: int, device: str) -> ScenarioRun:
        rng = np.random.default_rng(seed)
        data = _first_token_task(rng, 2000, length, vocab=4)
        return _classifier_run(
            seed, device, data, lambda: _SeqClassifier(cell, 4, 32, 4), _adam(lr), batch=64, clip=clip
        )

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

_CLIP = MappingProxyType({"clip": ("norm", 1.0)})

_LIST: list[Scenario] = [
    Scenario(
        name="sigmoid",
        title="Vanishing: a sigmoid MLP with a tiny init",
        blurb="4 hidden sigmoid layers, normal(0, 0.05) init, two circles: the first layers get no gradient",
        narrative=(
            "Each sigmoid passes back at most a quarter of the gradient, and weights drawn with std 0.05 "
            "shrink it further: every layer toward the input sees about ten times less than the one above.\n\n"
            "Watch the heatmap: the rows of the first layers go dark within a few dozen steps and get the "
            "vanishing flag, while the loss sits at ln 2 = 0.69, a coin toss.\n\n"
            "Raising the learning rate does not help. The cure is in the init and the activation: see the "
            "next chapters, sigmoid-relu-he and sigmoid-glorot."
        ),
        steps=300,
        build=_circles_mlp(nn.Sigmoid, "normal0.05"),
        chapter="vanishing",
    ),
    Scenario(
        name="sigmoid-relu-he",
        title="Cure: ReLU with He init",
        blurb="The same MLP with ReLU and He init: gradients reach every layer",
        narrative=(
            "ReLU passes the gradient through unchanged where a unit is active, and He init scales the "
            "weights so that signals keep their size through depth.\n\n"
            "Every row of the heatmap stays in the same band, no flag is raised, and the loss falls as the "
            "net learns the two circles."
        ),
        steps=300,
        build=_circles_mlp(nn.ReLU, "he"),
        chapter="vanishing",
    ),
    Scenario(
        name="sigmoid-glorot",
        title="Cure: sigmoid with Glorot init",
        blurb="The same sigmoid MLP with Glorot init: no vanishing at this depth",
        narrative=(
            "Keeping the sigmoid but scaling the initial weights by Glorot's rule keeps the gradient within "
            "a factor of a few per layer: the first layers are dimmer than the last, not dark.\n\n"
            "No flag, and the loss leaves 0.69. Glorot alone stops helping with much deeper sigmoid nets: "
            "see deep-sigmoid."
        ),
        steps=300,
        build=_circles_mlp(nn.Sigmoid, "glorot"),
        chapter="vanishing",
    ),
    Scenario(
        name="relu-explode",
        title="Exploding: plain SGD on raw regression targets",
        blurb="5 hidden ReLU layers, He-uniform init, plain SGD on unscaled targets: the run blows up",
        narrative=(
            "The targets are in the hundreds and nothing scales them, so the first gradients are large; "
            "each SGD step overshoots and makes the next gradient larger still.\n\n"
            "Watch the global norm climb by orders of magnitude: the exploding flag comes up a few steps "
            "before the first NaN. Press c to clip the gradient norm, or - to halve the learning rate, "
            "before it is too late; relu-explode-clip shows the run clipped from the start."
        ),
        steps=200,
        build=_regression_mlp(None),
        chapter="exploding",
    ),
    Scenario(
        name="relu-explode-clip",
        title="Cure: clip the gradient norm to 1.0",
        blurb="The same run with the gradient norm clipped to 1.0: no NaN, the loss falls",
        narrative=(
            "Clipping rescales the whole gradient whenever its norm passes 1.0, so no step can overshoot by "
            "much. The raw norms on the heatmap are still large at first (they are measured before "
            "clipping), but they settle as the loss falls.\n\n"
            "Press c to turn clipping off and watch the run blow up."
        ),
        steps=200,
        build=_regression_mlp(("norm", 1.0)),
        watch_options=_CLIP,
        chapter="exploding",
    ),
    Scenario(
        name="deep-linear",
        title="A 20-layer deep linear net with Adam",
        blurb="20 linear layers on the digits with Adam: products of many weights are unstable",
        narrative=(
            "Without nonlinearities the net is a product of 20 matrices. Adam moves every weight at the "
            "same pace whatever its gradient, and in a product of 20 factors small moves compound.\n\n"
            "Watch the loss line for spikes and the global norm for bursts. Press - to halve the learning "
            "rate; deep-linear-clip shows that clipping the norm does little under Adam, which rescales "
            "gradients itself."
        ),
        steps=300,
        build=_deep_linear(None),
        chapter="exploding",
    ),
    Scenario(
        name="deep-linear-clip",
        title="The deep linear net, clipped",
        blurb="The same 20-layer linear net with the gradient norm clipped to 1.0",
        narrative=(
            "Clipping bounds each gradient, but Adam divides it by its own running size, so the step a "
            "weight takes hardly changes.\n\n"
            "Compare the loss and the alerts with deep-linear: the cure for Adam is a smaller learning rate "
            "(press -) or warm-up, not clipping."
        ),
        steps=300,
        build=_deep_linear(("norm", 1.0)),
        watch_options=_CLIP,
        chapter="exploding",
    ),
    Scenario(
        name="residual-mlp",
        title="Healthy: a residual MLP with LayerNorm",
        blurb="Residual blocks with LayerNorm on the digits: the reference healthy run",
        narrative=(
            "Skip connections carry the gradient past every block, and LayerNorm keeps activations in range.\n\n"
            "This is what healthy looks like: every layer in one band of the heatmap, the whole band drifting "
            "down together as the loss goes to zero. Shrinking together is convergence, not vanishing: no "
            "flag is raised."
        ),
        steps=300,
        build=_residual,
        chapter="healthy",
    ),
    Scenario(
        name="cnn-bn",
        title="Healthy: a small CNN with BatchNorm",
        blurb="Two conv layers with BatchNorm on the 8x8 digits",
        narrative=(
            "A small convolutional net with BatchNorm after each convolution.\n\n"
            "The BatchNorm rows carry their own scale and shift parameters; their gradients move with the "
            "conv layers around them. No flag, and the loss goes to near zero."
        ),
        steps=300,
        build=_cnn,
        chapter="healthy",
    ),
    Scenario(
        name="lstm",
        title="Healthy: an LSTM on a short memory task",
        blurb="An LSTM recalls the first of 10 tokens",
        narrative=(
            "The LSTM's gates keep a memory cell through the sequence, so the gradient from the last step "
            "reaches the first token.\n\n"
            "Watch the loss fall to near zero with every row of the heatmap steady."
        ),
        steps=300,
        build=_seq_run("lstm", 10, 1e-2),
        chapter="healthy",
    ),
    Scenario(
        name="deep-sigmoid",
        title="Vanishing: 10 sigmoid layers of 256 with Adam",
        blurb="10 hidden sigmoid layers on the digits: depth alone starves the first layers",
        narrative=(
            "With PyTorch's default init and Adam, ten sigmoid layers still pass back too little gradient: "
            "each one divides it by four or more.\n\n"
            "Watch the first rows of the heatmap: they are orders of magnitude below the last ones and get "
            "the vanishing flag. Adam rescales the small gradients, so the loss may still move, slowly. "
            "deep-sigmoid-cure shows the modern recipe."
        ),
        steps=300,
        build=_deep_sigmoid,
        chapter="vanishing",
    ),
    Scenario(
        name="deep-sigmoid-cure",
        title="Cure: ReLU, Glorot, BatchNorm and skip connections",
        blurb="The deep net rebuilt as residual ReLU blocks with BatchNorm: every layer learns",
        narrative=(
            "ReLU, Glorot init, BatchNorm and residual connections each keep the gradient's size through "
            "depth; together they make depth cheap.\n\n"
            "Every row stays in one band and the loss falls fast."
        ),
        steps=300,
        build=_deep_sigmoid_cure,
        chapter="vanishing",
    ),
    Scenario(
        name="rnn-tanh",
        title="Vanishing through time: a tanh RNN",
        blurb="A vanilla tanh RNN must recall the first of 40 tokens: the gradient fades through time",
        narrative=(
            "The gradient from the answer has to travel back 40 time steps, through a tanh and the same "
            "recurrent matrix each time, and fades to nothing: the loss stays near ln 4 = 1.39.\n\n"
            "The recurrent layer is one row of the heatmap, so look at the loss: it does not move. "
            "rnn-lstm and rnn-gru show gated cells, clipped, learning the same task."
        ),
        steps=400,
        build=_seq_run("rnn", 40, 3e-3),
        chapter="recurrent",
    ),
    Scenario(
        name="rnn-lstm",
        title="Cure: an LSTM, clipped",
        blurb="The same long-range task with an LSTM and the gradient norm clipped to 1.0",
        narrative=(
            "The LSTM's cell state carries information and gradient across the 40 steps. Clipping at 1.0 "
            "guards against the occasional burst that recurrent nets are known for.\n\n"
            "Watch the loss drop once the net finds the first token."
        ),
        steps=400,
        build=_seq_run("lstm", 40, 3e-3, ("norm", 1.0)),
        watch_options=_CLIP,
        chapter="recurrent",
    ),
    Scenario(
        name="rnn-gru",
        title="Cure: a GRU, clipped",
        blurb="The same long-range task with a GRU and the gradient norm clipped to 1.0",
        narrative=(
            "A GRU gates its hidden state like an LSTM with fewer parameters.\n\n"
            "Compare how fast it finds the first token with rnn-lstm."
        ),
        steps=400,
        build=_seq_run("gru", 40, 3e-3, ("norm", 1.0)),
        watch_options=_CLIP,
        chapter="recurrent",
    ),
    Scenario(
        name="high-lr",
        title="A healthy CNN with far too high a learning rate",
        blurb="The BatchNorm CNN with SGD at lr 3.0: loss spikes and bursts of gradient",
        narrative=(
            "The model is fine; the step is not. Each update overshoots, the loss jumps, and the gradient "
            "norm with it.\n\n"
            "Watch for loss-spike and exploding alerts. Press - a few times to halve the learning rate and "
            "watch the run settle; the marker on the chart shows the step the change took effect."
        ),
        steps=300,
        build=_high_lr,
        chapter="learning-rate",
    ),
    Scenario(
        name="opt-sgd",
        title="Optimisers: plain SGD",
        blurb="A ReLU MLP on two moons with plain SGD (lr 0.05)",
        narrative="The baseline: each step moves along the gradient, no memory. Compare the loss curves of opt-*.",
        steps=300,
        build=_optimizer_run(_sgd(0.05)),
        chapter="optimisers",
    ),
    Scenario(
        name="opt-momentum",
        title="Optimisers: SGD with momentum",
        blurb="The same MLP with SGD and momentum 0.9",
        narrative="Momentum accumulates past gradients: faster along consistent directions, damped across noise.",
        steps=300,
        build=_optimizer_run(_sgd(0.05, 0.9)),
        chapter="optimisers",
    ),
    Scenario(
        name="opt-adam",
        title="Optimisers: Adam",
        blurb="The same MLP with Adam (lr 1e-2)",
        narrative="Adam scales each parameter's step by its gradient's running size: every layer moves at one pace.",
        steps=300,
        build=_optimizer_run(_adam(1e-2)),
        chapter="optimisers",
    ),
    Scenario(
        name="opt-step-lr",
        title="Optimisers: momentum with step decay",
        blurb="SGD with momentum; the learning rate is divided by 10 every 100 steps",
        narrative="Watch the LR line step down and the loss settle lower after each drop.",
        steps=300,
        build=_optimizer_run(
            _sgd(0.1, 0.9), lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.1)
        ),
        chapter="optimisers",
    ),
    Scenario(
        name="opt-exp-lr",
        title="Optimisers: momentum with exponential decay",
        blurb="SGD with momentum; the learning rate shrinks by 1% every step",
        narrative="A smooth decay: big steps early, fine ones late. Compare with opt-step-lr.",
        steps=300,
        build=_optimizer_run(
            _sgd(0.1, 0.9), lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=math.exp(math.log(0.01) / 300))
        ),
        chapter="optimisers",
    ),
]

SCENARIOS: dict[str, Scenario] = {s.name: s for s in _LIST}
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
