"""Advice says only what is true and possible (issue 29): every value it suggests is one the run
would take (the validators `watch()` and `SetClip` use), it derives them from the healthy part of
the run, it suggests nothing already on, and its cures fit the architecture `RunStart` names."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gradtui
from gradtui.model.advice import RunFacts, suggested_commands, suggestions
from gradtui.model.commands import CommandRefused, ControlState, SetClip, apply
from gradtui.model.events import Alert, Event, LayerInfo, RunStart
from gradtui.model.report import summarize
from gradtui.probe.clip import check_clip

# ---------------------------------------------------------------- a nanoGPT-shaped model


class GPTConfig:
    """nanoGPT's config (model.py), small: nothing downloads."""

    def __init__(self, n_layer: int = 2, n_head: int = 2, n_embd: int = 32, vocab: int = 64, block: int = 16) -> None:
        self.n_layer, self.n_head, self.n_embd, self.vocab, self.block = n_layer, n_head, n_embd, vocab, block


class LayerNorm(nn.Module):
    """nanoGPT's own LayerNorm (an optional bias)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd)
        self.n_head = c.n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, 4 * c.n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * c.n_embd, c.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = (
            LayerNorm(c.n_embd),
            CausalSelfAttention(c),
            LayerNorm(c.n_embd),
            MLP(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # residual blocks
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, c: GPTConfig) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(c.vocab, c.n_embd),
                "wpe": nn.Embedding(c.block, c.n_embd),
                "h": nn.ModuleList([Block(c) for _ in range(c.n_layer)]),
                "ln_f": LayerNorm(c.n_embd),
            }
        )
        self.lm_head = nn.Linear(c.n_embd, c.vocab, bias=False)
        self.lm_head.weight = self.transformer["wte"].weight
        for name, p in self.named_parameters():  # nanoGPT's init: 0.02, residual projections scaled
            if name.endswith(".weight") and p.dim() == 2:
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        x = t["wte"](idx) + t["wpe"](torch.arange(idx.shape[1]))
        for block in t["h"]:
            x = block(x)
        logits = self.lm_head(t["ln_f"](x))
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _gpt_events(steps: int = 12) -> list[Event]:
    torch.manual_seed(0)
    c = GPTConfig()
    model = GPT(c)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4)
    data = torch.randint(0, c.vocab, (steps, 4, c.block + 1))
    mon = gradtui.watch(model, opt, queue=True)
    for it in range(steps):
        loss = model(data[it, :, :-1], data[it, :, 1:])
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        opt.step()
    mon.close()
    assert mon.events is not None
    return list(mon.events.drain())


def _check(advice: list[dict[str, Any]], start: RunStart | None, facts: RunFacts | None = None) -> None:
    """Every suggested command is one `watch()` and the probe's command rule accept, and none is in force."""
    lrs = start.lrs if start is not None and start.lrs else (1.0,)
    guard = start is not None and start.guard
    mode, threshold = (
        facts.clipping() if facts is not None else (start.clip_mode, start.clip_threshold) if start else ("off", 1.0)
    )
    for entry in advice:
        for cmd in suggested_commands(entry):
            try:
                apply(ControlState(lrs=lrs), cmd)
            except CommandRefused as exc:
                raise AssertionError(f"{cmd} refused: {exc}\n{entry}") from None
            if isinstance(cmd, SetClip):
                check_clip((cmd.mode, cmd.threshold))  # what watch(clip=...) says
                assert cmd.mode != mode or (mode == "norm" and cmd.threshold is not None and cmd.threshold < threshold)
        assert "clip the gradient norm at 0 " not in entry["cure"] and "('norm', 0)" not in entry["cure"]
        if guard:
            assert "guard=True" not in entry["cure"], entry
        if mode == "auto":
            assert "SetClip('auto'" not in entry["cure"], entry


# ---------------------------------------------------------------- item 1: clip at 0


def test_a_run_whose_first_norms_were_0_is_told_there_is_no_healthy_stretch_not_to_clip_at_0() -> None:
    """A loss weighted 0 for the first 100 steps, then a rate far too high: before the fix the advice
    read "clip the gradient norm at 0 (watch(clip=('norm', 0)))", which watch() and SetClip refuse."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    mon = gradtui.watch(model, opt, queue=True)
    for it in range(140):
        if it == 100:
            for group in opt.param_groups:
                group["lr"] = 5.0
        weight = 0.0 if it < 100 else 1.0
        loss = weight * ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        opt.step()
    mon.close()
    assert mon.events is not None
    events = list(mon.events.drain())
    out = summarize(events)
    (start,) = [e for e in events if isinstance(e, RunStart)]
    blowup = [a for a in out["suggestions"] if a["kind"] == "exploding"]
    assert blowup, [a["kind"] for a in out["suggestions"]]
    (advice,) = blowup
    assert "clip" not in advice  # no threshold from norms that were all 0
    assert "no healthy stretch before step" in advice["cure"] and "were 0" in advice["cure"]
    _check(out["suggestions"], start)


def test_healthy_norms_among_zeros_give_a_threshold_from_the_nonzero_ones() -> None:
    rng = np.random.default_rng(0)
    norms = np.concatenate([np.zeros(100), rng.uniform(1.0, 2.0, 30), 2.0 * 3.0 ** np.arange(1, 9)])
    start = RunStart("r", 1, 0.0, (LayerInfo("0", "Linear", 10),), (0.1,), "off", 1.0, 1, 1, "cpu")
    facts = RunFacts(
        start, [Alert(130, None, "exploding", True, 1.0, 1.0, level="critical")], np.arange(norms.size), norms
    )
    (advice,) = suggestions(facts)
    assert advice["clip"]["threshold"] == float(f"{np.percentile(norms[100:130], 95):.2g}")
    _check([advice], start)


# ---------------------------------------------------------------- item 2: nothing already on


def test_a_guarded_clipped_run_is_not_told_to_turn_on_what_is_on() -> None:
    """guard=True and a norm clip at 0.5: a blow-up under them was told "watch with guard=True"."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    mon = gradtui.watch(model, opt, queue=True, guard=True, clip=("norm", 0.5))
    for it in range(120):
        loss = ((model(x) - y) ** 2).mean() * (1.0 if it < 60 else 10.0 ** min(30, it - 59))
        opt.zero_grad()
        loss.backward()
        mon.step(loss)
        opt.step()
    mon.close()
    assert mon.events is not None
    events = list(mon.events.drain())
    out = summarize(events)
    (start,) = [e for e in events if isinstance(e, RunStart)]
    assert start.guard and out["suggestions"], out["alerts"][:3]
    assert any(a["kind"] in ("exploding", "nonfinite", "loss_spike") for a in out["suggestions"])
    for advice in out["suggestions"]:
        assert "guard=True" not in advice["cure"], advice
    _check(out["suggestions"], start)


# ---------------------------------------------------------------- item 3: cures that fit


def test_a_gpt_with_layernorm_and_residuals_gets_a_transformers_cures() -> None:
    """Vanishing advice on nanoGPT compared its 0.02 init with Glorot/He and suggested "residual
    connections with BatchNorm"."""
    events = _gpt_events()
    (start,) = [e for e in events if isinstance(e, RunStart)]
    assert "CausalSelfAttention" in start.modules and "LayerNorm" in start.modules
    last = max(getattr(e, "step", 0) for e in events)
    faded = ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"]
    alerts = [
        Alert(last + 1 + k, name, "vanishing", True, 1e-4, 1e-3, level="warning") for k in range(6) for name in faded
    ]
    out = summarize([*events, *alerts], recompute=False)
    (advice,) = [a for a in out["suggestions"] if a["kind"] == "vanishing"]
    text = advice["cause"] + advice["cure"]
    assert "BatchNorm" not in text and "Glorot" not in text and "He init" not in text
    for cure in ("warm-up", "0.02", "eps", "peak rate"):
        assert cure in advice["cure"], cure
    _check(out["suggestions"], start)


def test_a_plain_deep_stack_still_gets_the_tours_cures_and_no_batchnorm_it_has() -> None:
    layers = (LayerInfo("0", "Linear", 10), LayerInfo("1", "BatchNorm1d", 4), LayerInfo("3", "Linear", 10))
    start = RunStart("r", 1, 0.0, layers, (0.1,), "off", 1.0, 1, 1, "cpu", activations=("Sigmoid",))
    facts = RunFacts(start, [Alert(5, "0", "vanishing", True, 1e-4, 1e-3)], np.arange(3), np.ones(3))
    (advice,) = suggestions(facts)
    assert "sigmoid-relu-he" in advice["cure"] and "with BatchNorm" not in advice["cure"]
    assert "has BatchNorm1d already" in advice["cure"]


# ---------------------------------------------------------------- the property


_KINDS = ("exploding", "nonfinite", "vanishing", "dead", "loss_spike")


@st.composite
def runs(draw: st.DrawFn) -> RunFacts:
    family = draw(st.sampled_from(["mlp", "transformer"]))
    if family == "transformer":
        layers = (LayerInfo("h.0.attn.c_attn", "Linear", 96), LayerInfo("h.0.ln_1", "LayerNorm", 64))
        modules: tuple[str, ...] = ("GPT", "CausalSelfAttention", "Linear", "LayerNorm", "GELU")
    else:
        layers = (LayerInfo("0", "Linear", 96), LayerInfo("2", "Linear", 33))
        modules = ("Sequential", "Linear", draw(st.sampled_from(["Sigmoid", "ReLU", "Tanh"])))
    lr = draw(st.sampled_from([1e-12, 1e-11, 1e-6, 3e-4, 0.1, 10.0, 999.0]))
    mode = draw(st.sampled_from(["off", "norm", "value", "auto"]))
    threshold = draw(st.sampled_from([1e-12, 1e-3, 0.5, 1.0, 1e6, 1e12]))
    start = RunStart(
        "r",
        1,
        0.0,
        layers,
        (lr,),
        mode,
        threshold,
        1,
        1,
        "cpu",
        guard=draw(st.booleans()),
        modules=modules,
        activations=tuple(m for m in modules if m in ("Sigmoid", "ReLU", "Tanh", "GELU")),
        fan_in=(32, 0),
        fan_out=(96, 0),
    )
    n = draw(st.integers(0, 300))
    zeros = draw(st.integers(0, n))
    scale = draw(st.sampled_from([1e-30, 1e-13, 1e-3, 1.0, 1e8, 1e13, 1e30]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    norms = np.concatenate(
        [np.zeros(zeros), scale * rng.lognormal(0.0, draw(st.sampled_from([0.1, 1.0, 5.0])), n - zeros)]
    )
    blow = draw(st.integers(0, 20))
    norms = np.concatenate(
        [
            norms,
            (norms[-1] if n and norms[-1] > 0 else 1.0)
            * draw(st.sampled_from([1.5, 3.0, 100.0])) ** np.arange(1, blow + 1),
        ]
    )
    if draw(st.booleans()):
        norms = np.concatenate([norms, [math.nan, math.inf]])
    steps = np.arange(norms.size)
    alerts = [
        Alert(
            draw(st.integers(0, max(0, norms.size - 1))),
            draw(st.sampled_from([None, layers[0].name])),
            draw(st.sampled_from(_KINDS)),
            True,
            1.0,
            1.0,
            level=draw(st.sampled_from(["warning", "critical"])),
        )
        for _ in range(draw(st.integers(1, 4)))
    ]
    weights = np.array([draw(st.sampled_from([1e-4, 0.02, 1.0])) * math.sqrt(96), 1.0])
    clip = draw(st.sampled_from([None, ("norm", 0.25), ("auto", 2.5), ("off", 1.0)]))
    return RunFacts(start, alerts, steps, norms, weight_norm=weights, clip=clip)


@settings(max_examples=300, deadline=None)
@given(runs())
def test_every_suggestion_is_accepted_by_the_api_and_none_is_on_already(facts: RunFacts) -> None:
    advice = suggestions(facts)
    _check(advice, facts.start, facts)
    start = facts.start
    assert start is not None
    for entry in advice:
        assert entry["cause"] and entry["cure"]
        if "CausalSelfAttention" in start.modules:
            assert "BatchNorm" not in entry["cure"] and "Glorot" not in entry["cause"]
