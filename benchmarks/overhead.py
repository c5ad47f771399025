"""Training-step overhead of `gradtui.watch` and of the anchor methods, side by side in one process.

Identical copies of each model train on the same batch, one copy per method; rounds
rotate through the methods, so drift in machine load hits them all alike. Prints each
method's step time as a ratio to the plain step: each round times a block of `--steps`
consecutive steps per method, and a method's ratio is the median over rounds of its block's
mean step time over the plain block's of the same round (a mean over the block, so a probe
that samples every few steps pays for its sampled steps in full; a ratio within one round,
because on a shared machine the plain step itself drifts by 30% over tens of seconds; a
median over rounds, so a noisy moment does not decide):

- gradtui: `gradtui.watch(model, opt, record=...)`, defaults otherwise (the overhead budget
  chooses the sampling stride; its column "stride" says which it settled on).
- gradtui every=1: the same with `every=1`, per-layer statistics at every step.
- gradtui guard: the defaults and `guard=True`: a finiteness check at every step, and a
  snapshot of the model and optimizer state every 25 healthy steps (so 16-step blocks hold
  0 or 1 of them). Its columns: "guard mon.step ms", its `mon.step` time per step like
  gradtui's (snapshots included); "snap ms" and "snap MB", one snapshot on its own (the
  median of 5 until it landed) and its size.
- lightning: Lightning's `grad_norm` utility as its docs use it in `on_before_optimizer_step`
  (a norm per parameter, their total through `torch.tensor(list)`).
- item loop: `p.grad.norm().item()` per parameter, the loop people write by hand.
- wandb hooks: `wandb.watch(model, log="gradients", log_freq=1)`'s work: a tensor hook per
  parameter that takes min, max and a 64-bin `histc` of its gradient during backward.

    .venv/bin/python benchmarks/overhead.py            # CPU, all models, adamw
    .venv/bin/python benchmarks/overhead.py --models "mlp 50x128 b128" --rounds 40
    .venv/bin/python benchmarks/overhead.py --device cuda --rounds 30
    .venv/bin/python benchmarks/overhead.py --device cuda --autocast bf16 --models "gpt2-small 12x768 s1024 b8"

The GPT-2-small-shaped model (124M parameters) is built from its sizes, nothing downloaded;
it is left out of the default models (a CPU step takes minutes). `benchmarks/gpu_check.sh`
runs it on a CUDA machine.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gradtui

Batch = tuple[torch.Tensor, torch.Tensor]


def mlp(depth: int = 12, width: int = 512, batch: int = 256) -> tuple[nn.Module, Batch]:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 10))
    return model, (torch.randn(batch, width), torch.randint(0, 10, (batch,)))


def mlp_deep() -> tuple[nn.Module, Batch]:
    """Many small tensors (102 gradients, 3.3 MB): per-tensor costs dominate."""
    return mlp(depth=50, width=128, batch=128)


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


class GPT(nn.Module):
    """A GPT-2-shaped decoder: token and position embeddings, pre-norm blocks with a 4x GELU
    MLP and causal attention, a final norm and a head tied to the token embedding."""

    def __init__(self, vocab: int = 50257, d: int = 768, layers: int = 12, heads: int = 12, seq: int = 1024) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        block = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.mask: torch.Tensor
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.embed(x) + self.pos(torch.arange(t, device=x.device))
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        out: torch.Tensor = self.head(self.norm(h)).reshape(-1, self.vocab)
        return out


def gpt2_small(batch: int = 8, seq: int = 1024) -> tuple[nn.Module, Batch]:
    """GPT-2 small's shape (12 layers, d_model 768, 12 heads, 50257 tokens, 124M parameters)."""
    model = GPT(seq=seq)
    x = torch.randint(0, model.vocab, (batch, seq))
    return model, (x, torch.randint(0, model.vocab, (batch * seq,)))


MODELS: dict[str, Callable[[], tuple[nn.Module, Batch]]] = {
    "mlp 12x512 b256": mlp,
    "mlp 50x128 b128": mlp_deep,
    "cnn 3 conv+bn b64": cnn,
    "transformer 4x128 b32x64": transformer,
    "gpt2-small 12x768 s1024 b8": gpt2_small,
}
DEFAULT_MODELS = [name for name in MODELS if not name.startswith("gpt2")]
AUTOCAST = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_opt(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return torch.optim.AdamW(model.parameters(), lr=1e-4)


# ---------------------------------------------------------------- the anchor methods


def lightning_grad_norm(model: nn.Module) -> dict[str, torch.Tensor]:
    """`lightning.pytorch.utilities.grad_norm(model, norm_type=2)`, as Lightning ships it."""
    norms = {f"grad_2.0_norm/{n}": p.grad.data.norm(2.0) for n, p in model.named_parameters() if p.grad is not None}
    if norms:
        norms["grad_2.0_norm_total"] = torch.tensor(list(norms.values())).norm(2.0)
    return norms


def item_loop(model: nn.Module) -> dict[str, float]:
    return {n: p.grad.norm().item() for n, p in model.named_parameters() if p.grad is not None}


def wandb_hooks(model: nn.Module) -> list[Any]:
    """What `wandb.watch(model, log="gradients", log_freq=1)` does per parameter during backward."""
    bins = 64

    def stats(grad: torch.Tensor) -> None:
        flat = grad.detach().reshape(-1).float()
        if not bool(torch.isfinite(flat).all()):
            flat = flat[torch.isfinite(flat)]
            if flat.numel() == 0:
                return
        lo, hi = flat.min().item(), flat.max().item()
        hist = flat.histc(bins=bins, min=lo, max=hi).cpu().detach().clone()
        hist.tolist()

    return [p.register_hook(lambda g, f=stats: f(g)) for p in model.parameters() if p.requires_grad]


METHODS = ("plain", "gradtui", "gradtui every=1", "gradtui guard", "lightning", "item loop", "wandb hooks")


class Runner:
    """One copy of the model trained with one method."""

    def __init__(
        self,
        method: str,
        model: nn.Module,
        opt_name: str,
        batch: Batch,
        device: str,
        record: Path | None,
        autocast: torch.dtype | None = None,
    ) -> None:
        self.method, self.model, self.batch, self.device = method, model, batch, device
        self.autocast = autocast
        self.opt = make_opt(opt_name, model)
        self.loss_fn = nn.CrossEntropyLoss()
        self.mon = None
        if method.startswith("gradtui"):
            path = record and record.with_suffix(f".{len(method)}.gtr")
            if method == "gradtui every=1":
                self.mon = gradtui.watch(model, self.opt, record=path, overwrite=True, every=1)
            elif method == "gradtui guard":
                self.mon = gradtui.watch(model, self.opt, record=path, overwrite=True, guard=True)
            else:  # defaults only: the same call runs against an older checkout on PYTHONPATH
                self.mon = gradtui.watch(model, self.opt, record=path, overwrite=True)
        self.hooks = wandb_hooks(model) if method == "wandb hooks" else []
        self.times: list[float] = []
        self.probe: list[float] = []

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def block(self, steps: int) -> None:
        """`steps` steps in a row; their mean step time and mean `mon.step` time are one sample each."""
        times, probe = len(self.times), len(self.probe)
        for _ in range(steps):
            self.step()
        self.times[times:] = [statistics.fmean(self.times[times:])]
        if self.mon is not None:
            self.probe[probe:] = [statistics.fmean(self.probe[probe:])]

    def step(self, keep: bool = True) -> None:
        x, y = self.batch
        self._sync()
        t0 = time.perf_counter()
        # Parameters and gradients stay float32 under autocast (no GradScaler needed for bf16).
        cast = torch.autocast(self.device, self.autocast) if self.autocast is not None else contextlib.nullcontext()
        with cast:
            loss = self.loss_fn(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.mon is not None:
            t1 = time.perf_counter()
            self.mon.step(loss)
            if keep:
                self.probe.append(time.perf_counter() - t1)
        elif self.method == "lightning":
            lightning_grad_norm(self.model)
        elif self.method == "item loop":
            item_loop(self.model)
        self.opt.step()
        self._sync()
        if keep:
            self.times.append(time.perf_counter() - t0)

    def close(self) -> None:
        if self.mon is not None:
            self.mon.close()
        for h in self.hooks:
            h.remove()


def run_model(
    name: str,
    opt_name: str,
    device: str,
    rounds: int,
    steps: int,
    methods: Sequence[str],
    tmp: Path,
    autocast: torch.dtype | None = None,
) -> dict[str, float]:
    """Step time per method (seconds), gradtui's own `mon.step` time per step as "probe" and its
    sampling stride at the end as "stride"."""
    torch.manual_seed(0)
    model, (x, y) = MODELS[name]()
    batch = (x.to(device), y.to(device))
    record = tmp / f"{len(name)}-{opt_name}.gtr"
    runners = [Runner(m, copy.deepcopy(model).to(device), opt_name, batch, device, record, autocast) for m in methods]
    del model  # a 124M-parameter original need not stay next to its copies
    for r in runners:  # warm-up: caches, allocations, and the budget's first choice of stride
        for _ in range(max(steps, 3)):
            r.step(keep=False)
    for i in range(rounds):
        # Rotate the order too: no method always runs right after the same one.
        for r in runners[i % len(runners) :] + runners[: i % len(runners)]:
            r.block(steps)
    gt = next((r for r in runners if r.method == "gradtui"), None)
    out = {r.method: statistics.median(r.times) for r in runners}
    plain = next(r for r in runners if r.method == "plain")
    for r in runners:
        out[f"ratio {r.method}"] = statistics.median(a / b for a, b in zip(r.times, plain.times, strict=True))
    if gt is not None and gt.mon is not None:
        out["probe"] = statistics.median(gt.probe)
        out["stride"] = getattr(gt.mon, "sampling_stride", gt.mon.every)  # older probes: a fixed every
    guarded = next((r for r in runners if r.method == "gradtui guard"), None)
    if guarded is not None:
        out["guard_probe"] = statistics.median(guarded.probe)
        out["snap_ms"], out["snap_mb"] = snapshot_cost(guarded.model, guarded.opt, device)
    for r in runners:
        r.close()
    return out


def snapshot_cost(model: nn.Module, opt: torch.optim.Optimizer, device: str) -> tuple[float, float]:
    """One guard snapshot of `model` and `opt` on its own: (median ms of 5 until it landed, MB)."""
    from gradtui.probe.snapshot import take

    times, size = [], 0
    for _ in range(5):
        t0 = time.perf_counter()
        snap = take(0, model, [opt])
        snap.wait()
        times.append(time.perf_counter() - t0)
        size = snap.nbytes
    return statistics.median(times) * 1e3, size / 2**20


def columns(methods: Sequence[str]) -> list[str]:
    """The printed table's columns when `methods` (plain left out) are measured."""
    out = ["model", "opt", "plain ms", *methods]
    if "gradtui" in methods:
        out += ["mon.step ms", "stride"]
    if "gradtui guard" in methods:
        out += ["guard mon.step ms", "snap ms", "snap MB"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=12, help="rotating rounds per model")
    parser.add_argument("--steps", type=int, default=16, help="steps per method per round (one timed block)")
    parser.add_argument("--models", nargs="*", default=DEFAULT_MODELS, choices=list(MODELS))
    parser.add_argument("--autocast", default="off", choices=list(AUTOCAST), help="forward and loss under autocast")
    parser.add_argument("--json", type=Path, help="also write the rows here, as JSON")
    parser.add_argument("--optimizers", nargs="*", default=["adamw"], choices=["adamw", "sgd"])
    parser.add_argument("--methods", nargs="*", default=list(METHODS[1:]), choices=list(METHODS[1:]))
    args = parser.parse_args()
    methods = ["plain", *args.methods]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"threads {torch.get_num_threads()}"
    print(
        f"torch {torch.__version__}, device {args.device} ({where}), autocast {args.autocast}, "
        f"{args.rounds} rounds x {args.steps} steps per method; gradtui: watch(model, opt, record=...) defaults"
    )
    results: list[dict[str, Any]] = []
    rows = [columns(args.methods)]
    with tempfile.TemporaryDirectory() as tmpdir:
        for name in args.models:
            for opt_name in args.optimizers:
                t = run_model(
                    name, opt_name, args.device, args.rounds, args.steps, methods, Path(tmpdir), AUTOCAST[args.autocast]
                )
                results.append(
                    {
                        "model": name,
                        "opt": opt_name,
                        "device": args.device,
                        "autocast": args.autocast,
                        "plain_ms": t["plain"] * 1e3,
                        "ratio": {m: t[f"ratio {m}"] for m in args.methods},
                        "probe_ms": t["probe"] * 1e3 if "probe" in t else None,
                        "stride": t.get("stride"),
                        "guard_probe_ms": t["guard_probe"] * 1e3 if "guard_probe" in t else None,
                        "snapshot_ms": t.get("snap_ms"),
                        "snapshot_mb": t.get("snap_mb"),
                    }
                )
                row = [name, opt_name, f"{t['plain'] * 1e3:.2f}", *(f"{t[f'ratio {m}']:.3f}" for m in args.methods)]
                if "probe" in t:
                    row += [f"{t['probe'] * 1e3:.3f}", str(int(t["stride"]))]
                if "snap_ms" in t:
                    row += [f"{t['guard_probe'] * 1e3:.3f}", f"{t['snap_ms']:.2f}", f"{t['snap_mb']:.1f}"]
                rows.append(row)
                print("  ".join(row), flush=True)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        cells = [c.rjust(wd) if i >= 2 else c.ljust(wd) for i, (c, wd) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells))
    print(
        "\nEach method column: its step time / the plain step time (the median over rotating rounds of its "
        "block's mean over the plain block's mean in the same round); mon.step ms: gradtui's own time per "
        "step, amortized over the block (guard mon.step ms: the same with guard=True; the difference is the "
        "guard's check and snapshots). "
        "Target for gradtui: <= 1.02 on CPU and no more than any anchor."
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
