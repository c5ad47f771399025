"""Training-step overhead of `gradtui.watch`, measured side by side in one process.

Two identical copies of each model train on the same batches; rounds alternate
between the plain copy and the watched copy, so drift in machine load hits both
alike. Prints median step times and their ratio (watched / plain).

    .venv/bin/python benchmarks/overhead.py            # CPU, all models
    .venv/bin/python benchmarks/overhead.py --device cuda --rounds 30
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import gradtui

Batch = tuple[torch.Tensor, torch.Tensor]


def mlp() -> tuple[nn.Module, Batch]:
    layers: list[nn.Module] = []
    for _ in range(12):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(512, 10))
    return model, (torch.randn(256, 512), torch.randint(0, 10, (256,)))


def cnn() -> tuple[nn.Module, Batch]:
    def block(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    model = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), nn.Flatten(), nn.Linear(128 * 4 * 4, 10))
    return model, (torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 1000, d: int = 128, layers: int = 4, seq: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq, d))
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x) + self.pos)
        out: torch.Tensor = self.head(h).reshape(-1, self.head.out_features)
        return out


def transformer() -> tuple[nn.Module, Batch]:
    x = torch.randint(0, 1000, (32, 64))
    return TinyTransformer(), (x, torch.randint(0, 1000, (32 * 64,)))


MODELS: dict[str, Callable[[], tuple[nn.Module, Batch]]] = {
    "mlp 12x512 b256": mlp,
    "cnn 3 conv+bn b64": cnn,
    "transformer 4x128 b32x64": transformer,
}


def make_opt(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=1e-4)


def run_one(
    name: str, opt_name: str, device: str, rounds: int, steps: int, record: bool, tmp: Path, detail_every: int = 50
) -> list[str]:
    torch.manual_seed(0)
    plain, (x, y) = MODELS[name]()
    watched = copy.deepcopy(plain)
    plain, watched, x, y = plain.to(device), watched.to(device), x.to(device), y.to(device)
    opt_p, opt_w = make_opt(opt_name, plain), make_opt(opt_name, watched)
    path = tmp / f"{abs(hash((name, opt_name)))}.gtr" if record else None
    mon = gradtui.watch(watched, opt_w, every=1, detail_every=detail_every, record=path, overwrite=True)
    loss_fn = nn.CrossEntropyLoss()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    in_probe: list[float] = []

    def step(model: nn.Module, opt: torch.optim.Optimizer, use_mon: bool) -> float:
        sync()
        t0 = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if use_mon:
            sync()
            t1 = time.perf_counter()
            mon.step(loss)
            sync()
            in_probe.append(time.perf_counter() - t1)
        opt.step()
        sync()
        return time.perf_counter() - t0

    for _ in range(3):  # warm-up both
        step(plain, opt_p, False)
        step(watched, opt_w, True)
    base: list[float] = []
    with_mon: list[float] = []
    for _ in range(rounds):
        base += [step(plain, opt_p, False) for _ in range(steps)]
        with_mon += [step(watched, opt_w, True) for _ in range(steps)]
    mon.close()
    b, w = statistics.median(base), statistics.median(with_mon)
    p = statistics.median(in_probe)
    return [
        name, opt_name, "yes" if record else "no", f"{b * 1e3:.2f}", f"{w * 1e3:.2f}", f"{w / b:.3f}",
        f"{p * 1e3:.3f}", f"{1 + p / b:.3f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=20, help="alternating rounds per model")
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--optimizers", nargs="*", default=["adamw", "sgd"], choices=["adamw", "sgd"])
    parser.add_argument("--record", action="store_true", help="also measure with a record file")
    parser.add_argument(
        "--detail-every", type=int, default=50, help="detail statistics every N steps (1: the cost of a detail step)"
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
          f"{args.rounds} rounds x {args.steps} steps, watch(every=1, detail_every={args.detail_every}) "
          "with default statistics and detectors")
    # "ratio" compares whole steps side by side; "mon.step ms" times the probe's own call
    # (less sensitive to noise from other processes), and "1 + probe/plain" turns it into a ratio.
    rows = [["model", "optimizer", "record", "plain ms", "watched ms", "ratio", "mon.step ms", "1+probe/plain"]]
    with tempfile.TemporaryDirectory() as tmpdir:
        for name in args.models:
            for opt_name in args.optimizers:
                for record in [False, True] if args.record else [False]:
                    rows.append(run_one(
                        name, opt_name, args.device, args.rounds, args.steps, record, Path(tmpdir), args.detail_every
                    ))
                    print("  ".join(rows[-1]), flush=True)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        cells = [c.rjust(wd) if i >= 3 else c.ljust(wd) for i, (c, wd) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells))
    print("\nratio = median watched step / median plain step (alternating rounds); target <= 1.03 on CPU.")


if __name__ == "__main__":
    main()
