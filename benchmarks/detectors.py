"""Detector trust over long runs: false alarms on healthy runs, and the lead on blow-ups.

Healthy runs of several architectures, optimisers and schedules train 5,000-8,000 steps
each, converging or memorising (label noise), under `gradtui.watch(record=...)`; blow-ups
train until their gradients turn non-finite. Every run trains twice, at the default settings
(the overhead budget chooses the sampling stride) and at `every=1`. Each record is then read
back and its StepStats (and, at a stride, the RunSteps of the unsampled steps) go through
`Detectors` (as `gradtui report` does), so the same records can be judged by other detector
code (`--replay`). Prints one table, the two settings side by side:

- healthy runs: gradient alarms (vanishing, exploding, non-finite, dead; each flag counted
  once, at the highest level it reached) per 10k steps, by level;
- blow-ups: the first non-finite step, the step of the first alert and of the first critical
  alert, and the lead of each over the first non-finite step.

    .venv/bin/python benchmarks/detectors.py                  # train and judge (about 6 min)
    .venv/bin/python benchmarks/detectors.py --save DIR       # ... keeping the records in DIR
    .venv/bin/python benchmarks/detectors.py --replay DIR     # judge DIR's records again
    .venv/bin/python benchmarks/detectors.py --only resmlp    # runs whose name contains "resmlp"

Records written before alert levels existed, or detectors without them, count every alarm
as a warning (a level of their own is what this benchmark is about).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import gradtui
from gradtui.model.detectors import Detectors
from gradtui.model.events import RunStart, StepStats
from gradtui.wire.record import read_record

GRADIENT_KINDS = ("vanishing", "exploding", "nonfinite", "dead")
LEVELS = ("info", "warning", "critical")

Batch = tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------- data and models


def _classification(seed: int, n: int = 2048, classes: int = 4, flip: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n, n_features=32, n_informative=16, n_classes=classes, flip_y=flip, random_state=seed
    )
    return x.astype(np.float32), y.astype(np.int64)


def _digits(seed: int, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), d.target.astype(np.int64)
    if noise:
        rng = np.random.default_rng(seed)
        flip = rng.random(y.size) < noise
        y = np.where(flip, rng.integers(0, 10, y.size), y)
    return x, y


def _sampler(x: np.ndarray, y: np.ndarray, batch: int, seed: int) -> Callable[[], Batch]:
    g = torch.Generator().manual_seed(seed)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def next_batch() -> Batch:
        idx = torch.randint(0, tx.shape[0], (batch,), generator=g)
        return tx[idx], ty[idx]

    return next_batch


class Block(nn.Module):
    """Pre-norm residual MLP block: x + fc2(gelu(fc1(ln(x))))."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.fc2(nn.functional.gelu(self.fc1(self.ln(x))))
        return out


def resmlp(d_in: int, classes: int, d: int = 64, blocks: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, d), *(Block(d) for _ in range(blocks)), nn.LayerNorm(d), nn.Linear(d, classes))


def cnn(bn: bool) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), *([nn.BatchNorm2d(cout)] if bn else []), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16), *block(16, 32), nn.MaxPool2d(2), *block(32, 32), nn.Flatten(), nn.Linear(32 * 16, 10)
    )


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 16, d: int = 48, layers: int = 2, seq: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq, d))
        layer = nn.TransformerEncoderLayer(d, 2, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos[: x.shape[1]]
        out: torch.Tensor = self.head(self.ln(self.blocks(h, mask=self.mask, is_causal=True)))
        return out


def _markov_tokens(seed: int, vocab: int = 16, seq: int = 32, batch: int = 16) -> Callable[[], Batch]:
    """Sequences from a fixed random Markov chain: next-token prediction that can be learned."""
    rng = np.random.default_rng(seed)
    trans = rng.dirichlet(np.full(vocab, 0.3), size=vocab)
    cum = np.cumsum(trans, axis=1)
    state = np.random.default_rng(seed + 1)

    def next_batch() -> Batch:
        seqs = np.empty((batch, seq + 1), np.int64)
        seqs[:, 0] = state.integers(0, vocab, batch)
        for t in range(seq):
            u = state.random(batch)[:, None]
            seqs[:, t + 1] = np.minimum((u > cum[seqs[:, t]]).sum(axis=1), vocab - 1)
        return torch.from_numpy(seqs[:, :-1]), torch.from_numpy(seqs[:, 1:])

    return next_batch


class SeqLSTM(nn.Module):
    def __init__(self, d_in: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(x)
        out: torch.Tensor = self.head(hidden[:, -1])
        return out


def _sequences(seed: int, n: int = 2048, length: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, length, 8)).astype(np.float32)
    y = (x[:, :, 0].sum(axis=1) + 0.5 * x[:, -5:, 1].sum(axis=1) > 0).astype(np.int64)
    return x, y


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LRScheduler:
    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (i - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ---------------------------------------------------------------- runs


@dataclass
class Setup:
    model: nn.Module
    opt: torch.optim.Optimizer
    batches: Callable[[], Batch]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    steps: int
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    lr_at: Callable[[int], float | None] | None = None
    """Blow-ups: the LR to set before step i (None: leave it)."""


def _ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def healthy_resmlp_memorise(seed: int) -> Setup:
    """The issue's case: pre-norm residual MLP, AdamW, warm-up + cosine, 5% flipped labels, memorised."""
    torch.manual_seed(seed)
    x, y = _classification(seed)
    model = resmlp(32, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    steps = 6000
    return Setup(model, opt, _sampler(x, y, 32, seed), _ce, steps, warmup_cosine(opt, steps, 200))


def healthy_resmlp_onecycle(seed: int) -> Setup:
    torch.manual_seed(seed)
    x, y = _classification(seed + 10, n=4096, classes=3, flip=0.02)
    model = resmlp(32, 3, d=48, blocks=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 6000
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    return Setup(model, opt, _sampler(x, y, 64, seed), _ce, steps, sched)


def healthy_cnn_bn(seed: int) -> Setup:
    torch.manual_seed(seed)
    x, y = _digits(seed)
    model = cnn(bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1500, gamma=0.3)
    return Setup(model, opt, _sampler(x, y, 32, seed), _ce, 5000, sched)


def healthy_cnn_noise(seed: int) -> Setup:
    torch.manual_seed(seed)
    x, y = _digits(seed, noise=0.1)
    model = cnn(bn=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Setup(model, opt, _sampler(x, y, 32, seed), _ce, 5000)


def healthy_tiny_gpt(seed: int) -> Setup:
    torch.manual_seed(seed)
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    steps = 5000
    return Setup(model, opt, _markov_tokens(seed), _ce, steps, warmup_cosine(opt, steps, 300))


def healthy_mlp_sgd(seed: int) -> Setup:
    from sklearn.datasets import make_moons

    torch.manual_seed(seed)
    x, y = make_moons(n_samples=1000, noise=0.1, random_state=seed)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    model = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return Setup(model, opt, _sampler(x, y.astype(np.int64), 32, seed), _ce, 8000)


def healthy_lstm(seed: int) -> Setup:
    torch.manual_seed(seed)
    x, y = _sequences(seed)
    model = SeqLSTM()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9995)
    return Setup(model, opt, _sampler(x, y, 32, seed), _ce, 5000, sched)


def ramp(lr: float, growth: float, start: int) -> Callable[[int], float]:
    """An LR schedule for a blow-up: `lr` until step `start`, then `growth` times more each step."""
    return lambda i: lr * growth ** max(0, i - start)


def blowup_late_ramp_resmlp(seed: int) -> Setup:
    """Healthy for 1,500 steps, then the LR grows 3% a step until the run diverges."""
    torch.manual_seed(seed)
    x, y = _classification(seed)
    model = resmlp(32, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return Setup(model, opt, _sampler(x, y, 32, seed), _ce, 4000, lr_at=ramp(1e-3, 1.03, 1500))


def blowup_regression_ramp(seed: int) -> Setup:
    """A ReLU MLP regressing unnormalised targets with SGD; from step 500 the LR grows 5% a step."""
    from sklearn.datasets import make_regression

    torch.manual_seed(seed)
    x, y = make_regression(n_samples=1024, n_features=16, n_informative=10, noise=5.0, random_state=seed)
    x, y = x.astype(np.float32), (0.1 * y).astype(np.float32)[:, None]
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    return Setup(model, opt, _sampler(x, y, 32, seed), nn.functional.mse_loss, 3000, lr_at=ramp(1e-4, 1.05, 500))


def blowup_cnn_mse_ramp(seed: int) -> Setup:
    """A CNN without BatchNorm fitting one-hot targets by MSE, SGD with momentum; from step 500
    the LR grows 3% a step."""
    torch.manual_seed(seed)
    x, y = _digits(seed)
    onehot = np.eye(10, dtype=np.float32)[y]
    model = cnn(bn=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return Setup(model, opt, _sampler(x, onehot, 32, seed), nn.functional.mse_loss, 3000, lr_at=ramp(0.01, 1.03, 500))


HEALTHY: dict[str, Callable[[int], Setup]] = {
    "resmlp-memorise (AdamW, warm-up+cosine, 5% noise)": healthy_resmlp_memorise,
    "resmlp-onecycle (SGD momentum, OneCycle)": healthy_resmlp_onecycle,
    "cnn-bn (SGD momentum, StepLR)": healthy_cnn_bn,
    "cnn-noise (Adam, 10% noise memorised)": healthy_cnn_noise,
    "tiny-gpt (AdamW, warm-up+cosine)": healthy_tiny_gpt,
    "mlp-tanh (SGD constant)": healthy_mlp_sgd,
    "lstm (RMSprop, exponential decay)": healthy_lstm,
}
BLOWUPS: dict[str, Callable[[int], Setup]] = {
    "late-ramp-resmlp": blowup_late_ramp_resmlp,
    "regression-ramp": blowup_regression_ramp,
    "cnn-mse-ramp": blowup_cnn_mse_ramp,
}
BLOWUP_SEEDS = (0, 1, 2)
DEMO_BLOWUPS = ("relu-explode",)
DEMO_SEEDS = (0, 1, 2, 3, 4, 5)
AFTER_NONFINITE = 5
"""Steps a blow-up trains on after its first non-finite gradient (the flags' aftermath is not judged)."""


SETTINGS: dict[str, dict[str, Any]] = {"default": {}, "every=1": {"every": 1}}
"""The two ways each run is watched: `watch()`'s defaults, and every step sampled."""


def _train(setup: Setup, record: Path, options: dict[str, Any]) -> None:
    mon = gradtui.watch(setup.model, setup.opt, record=record, serve=False, **options)
    left: int | None = None
    with mon:
        for i in range(setup.steps):
            if setup.lr_at is not None:
                lr = setup.lr_at(i)
                if lr is not None:
                    for group in setup.opt.param_groups:
                        group["lr"] = lr
            x, y = setup.batches()
            setup.opt.zero_grad(set_to_none=True)
            loss = setup.loss(setup.model(x), y)
            loss.backward()
            mon.step(loss)
            setup.opt.step()
            if setup.sched is not None:
                setup.sched.step()
            if left is None and not math.isfinite(loss.item()):
                left = AFTER_NONFINITE
            if left is not None:
                left -= 1
                if left <= 0:
                    break


def _train_demo(name: str, seed: int, record: Path, settings: dict[str, Any]) -> None:
    from gradtui.demo.scenarios import get

    scenario = get(name)
    run = scenario.build(seed, "cpu")
    options = {k: v for k, v in scenario.watch_options.items() if k not in ("detectors", "every")}
    mon = gradtui.watch(run.model, run.optimizer, record=record, serve=False, **options, **settings)
    left: int | None = None
    with mon:
        for _ in range(scenario.steps):
            loss = run.train_step(mon)
            if left is None and not math.isfinite(loss):
                left = AFTER_NONFINITE
            if left is not None:
                left -= 1
                if left <= 0:
                    break


# ---------------------------------------------------------------- judging


@dataclass
class Verdict:
    steps: int
    alarms: dict[str, int]
    """Gradient flags raised, each counted once at the highest level it reached."""
    first_nonfinite: int | None
    first_alert: int | None
    first_critical: int | None


def _level(alert: object) -> str:
    return str(getattr(alert, "level", "warning"))


def judge(record: Path) -> Verdict:
    """Replay a record through this code's detectors: each sampled step whole, each unsampled one
    (`RunSteps`, in records made with a sampling stride) through the run-wide rules, in step order."""
    events = read_record(record).events
    start = next(e for e in events if isinstance(e, RunStart))
    det = Detectors([layer.name for layer in start.layers], numel=[layer.numel for layer in start.layers])
    episode: dict[tuple[str | None, str], int] = {}
    counts = dict.fromkeys(LEVELS, 0)
    steps = 0
    first_nonfinite = first_alert = first_critical = None
    for ev in events:
        alerts: list[Any] = []
        if isinstance(ev, StepStats):
            steps += 1
            if first_nonfinite is None and (bool(np.asarray(ev.nonfinite).any()) or not math.isfinite(ev.global_norm)):
                first_nonfinite = ev.step
            alerts = det.update(ev)
        elif type(ev).__name__ == "RunSteps":  # by name: an older checkout (--replay) has no such event
            run: Any = ev
            norms = run.global_norm.tolist() if run.global_norm is not None else [None] * len(run.steps)
            canary = getattr(run, "canary_norm", None)  # steps that measured canary layers only
            for i, (step, loss, norm) in enumerate(zip(run.steps.tolist(), run.loss.tolist(), norms, strict=True)):
                steps += 1
                if first_nonfinite is None and norm is not None and not math.isfinite(norm):
                    first_nonfinite = int(step)
                if canary is not None:
                    alerts.extend(det.update_run(int(step), float(loss), norm, (run.canary_layers, canary[i])))
                else:
                    alerts.extend(det.update_run(int(step), float(loss), norm))
        for a in alerts:
            if a.kind not in GRADIENT_KINDS:
                continue
            key = (a.layer, a.kind)
            if not a.active:
                episode.pop(key, None)
                continue
            rank = LEVELS.index(_level(a)) if _level(a) in LEVELS else 1
            if first_alert is None:
                first_alert = a.step
            if rank == 2 and first_critical is None:
                first_critical = a.step
            was = episode.get(key)
            if was is None:
                counts[LEVELS[rank]] += 1
            elif rank > was:
                counts[LEVELS[was]] -= 1
                counts[LEVELS[rank]] += 1
            episode[key] = max(rank, was if was is not None else rank)
    return Verdict(steps, counts, first_nonfinite, first_alert, first_critical)


# ---------------------------------------------------------------- main


def _cases() -> Iterator[tuple[str, bool, Callable[[Path, dict[str, Any]], None]]]:
    for name, make in HEALTHY.items():
        yield name, True, functools.partial(_train_setup, make, 0)
    for name, make in BLOWUPS.items():
        for seed in BLOWUP_SEEDS:
            yield f"{name} seed {seed}", False, functools.partial(_train_setup, make, seed)
    for name in DEMO_BLOWUPS:
        for seed in DEMO_SEEDS:
            yield f"demo {name} seed {seed}", False, functools.partial(_train_demo, name, seed)


def _train_setup(make: Callable[[int], Setup], seed: int, record: Path, options: dict[str, Any]) -> None:
    _train(make(seed), record, options)


def _file(folder: Path, name: str, setting: str) -> Path:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in name.split(" (")[0])
    return folder / f"{stem}.{setting.replace('=', '')}.gtr"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save", type=Path, metavar="DIR", help="keep the records in DIR (created)")
    parser.add_argument("--replay", type=Path, metavar="DIR", help="judge the records in DIR instead of training")
    parser.add_argument("--only", help="only the runs whose name contains this")
    args = parser.parse_args(argv)
    if args.save and args.replay:
        parser.error("--save and --replay do not go together")
    if args.replay and not args.replay.is_dir():
        parser.error(f"--replay: {args.replay} is not a folder")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.replay or args.save or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows: list[tuple[str, bool, dict[str, Verdict]]] = []
        for name, healthy, train in _cases():
            if args.only and args.only not in name:
                continue
            verdicts: dict[str, Verdict] = {}
            for setting, options in SETTINGS.items():
                path = _file(folder, name, setting)
                t0 = time.perf_counter()
                if not args.replay:
                    path.unlink(missing_ok=True)
                    train(path, options)
                elif not path.exists():
                    print(f"{name} ({setting}): no record {path}, skipped", file=sys.stderr)
                    continue
                verdicts[setting] = judge(path)
                print(f"  {name} ({setting}): {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            rows.append((name, healthy, verdicts))
    _print(rows)
    return 0


def _print(rows: list[tuple[str, bool, dict[str, Verdict]]]) -> None:
    healthy = [(n, v) for n, h, v in rows if h]
    blowups = [(n, v) for n, h, v in rows if not h]
    if healthy:
        width = max(len(n) for n, _ in healthy)
        head = "  ".join(f"{s + ': info / warning / critical':>33}" for s in SETTINGS)
        print(f"{'healthy run (alarms per 10k steps)':<{width}}  {'steps':>6}  {head}")
        for name, verdicts in healthy:
            cells = []
            for setting in SETTINGS:
                v = verdicts.get(setting)
                per = [f"{v.alarms[lvl] * 10_000 / max(1, v.steps):.1f}" for lvl in LEVELS] if v else ["-"] * 3
                cells.append(f"{' / '.join(per):>33}")
            steps = max((v.steps for v in verdicts.values()), default=0)
            print(f"{name:<{width}}  {steps:>6}  {'  '.join(cells)}")
    if blowups:
        width = max(len(n) for n, _ in blowups)
        print()
        head = "  ".join(f"{s + ': NaN  alert (lead)  critical (lead)':>40}" for s in SETTINGS)
        print(f"{'blow-up':<{width}}  {head}")
        for name, verdicts in blowups:
            cells = []
            for setting in SETTINGS:
                v = verdicts.get(setting)
                cells.append(f"{_blowup_cell(v) if v else '-':>40}")
            print(f"{name:<{width}}  {'  '.join(cells)}")


def _blowup_cell(v: Verdict) -> str:
    """First non-finite step, first alert and first critical alert, each with its lead over the NaN."""

    def at(step: int | None) -> str:
        if step is None:
            return "none"
        if v.first_nonfinite is None:
            return str(step)
        lead = v.first_nonfinite - step
        return f"{step} ({lead})" if lead >= 0 else f"{step} (late)"

    nonfinite = "none" if v.first_nonfinite is None else str(v.first_nonfinite)
    return f"{nonfinite}  {at(v.first_alert)}  {at(v.first_critical)}"


if __name__ == "__main__":
    raise SystemExit(main())
