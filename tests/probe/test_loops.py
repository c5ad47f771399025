"""The loops people really write: nanoGPT's train.py shape (LR set every iteration, gradient
accumulation, GradScaler with unscale_ and clip_grad_norm_ after mon.step, weight tying).

References are torch's own: the norm `clip_grad_norm_` returns, the norm of what the
optimizer is handed (read in a pre-step hook), and the learning rate it steps with.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import gradtui
from gradtui.model.events import CommandResult, LogLine, RunSteps, StepStats

ITERS, ACCUM, GRAD_CLIP = 36, 4, 0.25
WARMUP, LR_DECAY_ITERS, LEARNING_RATE, MIN_LR = 5, 30, 6e-3, 6e-4


def get_lr(it: int) -> float:
    """nanoGPT's schedule: linear warm-up, cosine decay, then a floor."""
    if it < WARMUP:
        return LEARNING_RATE * (it + 1) / (WARMUP + 1)
    if it > LR_DECAY_ITERS:
        return MIN_LR
    ratio = (it - WARMUP) / (LR_DECAY_ITERS - WARMUP)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LEARNING_RATE - MIN_LR)


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 32, d: int = 16, t: int = 8) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(t, d)
        self.block = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying, as nanoGPT does

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1])
        x = self.ln_f(self.block(self.wte(idx) + self.wpe(pos)))
        logits = self.lm_head(x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _train(*, mon_before_clip: bool = True, inject_inf_at: int | None = None) -> dict[str, object]:
    torch.manual_seed(0)
    model = TinyGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    mon = gradtui.watch(model, opt, queue=True, detectors=False)
    used_lr: list[float] = []
    handed: list[float] = []

    def pre_step(o: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        used_lr.append(float(o.param_groups[0]["lr"]))
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        handed.append(float(torch.nn.utils.get_total_norm(grads)))

    opt.register_step_pre_hook(pre_step)
    data = torch.randint(0, 32, (ITERS, ACCUM, 4, 9))
    clip_returned: list[float] = []
    losses: list[float] = []
    for it in range(ITERS):
        lr = get_lr(it)
        for group in opt.param_groups:
            group["lr"] = lr
        if it == 20:
            mon.send(gradtui.SetLR(factor=0.1))
        total = 0.0
        for micro in range(ACCUM):
            batch = data[it, micro]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(batch[:, :-1], batch[:, 1:]) / ACCUM
            total += float(loss.detach())
            scaler.scale(loss).backward()
        if inject_inf_at == it:
            next(model.parameters()).grad.view(-1)[0] = float("inf")  # type: ignore[union-attr]
        losses.append(total)
        if mon_before_clip:
            mon.step(total, scaler=scaler)
        scaler.unscale_(opt)
        clip_returned.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)))
        if not mon_before_clip:
            mon.step(total, scaler=scaler)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    mon.close()
    assert mon.events is not None
    events = mon.events.drain()
    every: dict[int, tuple[float, float]] = {}
    for e in events:
        if isinstance(e, StepStats):
            every[e.step] = (e.loss, e.global_norm)
        elif isinstance(e, RunSteps):
            rows = zip(e.steps.tolist(), e.loss.tolist(), e.global_norm.tolist(), strict=True)
            every.update((s, (lo, g)) for s, lo, g in rows)
    return {
        "steps": [e for e in events if isinstance(e, StepStats)],
        "every_step": every,
        "results": [e for e in events if isinstance(e, CommandResult)],
        "logs": [e.text for e in events if isinstance(e, LogLine)],
        "used_lr": used_lr,
        "handed": handed,
        "clip_returned": clip_returned,
        "losses": losses,
        "layers": mon.layer_names,
    }


def test_the_amp_recipe_runs_and_the_numbers_are_torchs_own() -> None:
    out = _train()
    steps: list[StepStats] = out["steps"]  # type: ignore[assignment]
    every: dict[int, tuple[float, float]] = out["every_step"]  # type: ignore[assignment]
    assert sorted(every) == list(range(ITERS))  # every step, sampled or not
    # The global norm before any clipping is exactly what clip_grad_norm_ measured (unscaled), at every step.
    clip_returned: list[float] = out["clip_returned"]  # type: ignore[assignment]
    assert [every[i][1] for i in range(ITERS)] == pytest.approx(clip_returned, rel=1e-5)
    assert [every[i][0] for i in range(ITERS)] == pytest.approx(out["losses"])
    # The stepped norm is what the optimizer was handed, after the loop's own clipping (sampled steps).
    handed: list[float] = out["handed"]  # type: ignore[assignment]
    assert len(steps) >= 3
    for s in steps:
        assert s.stepped_norm == pytest.approx(handed[s.step], rel=1e-5)
        assert s.global_norm == pytest.approx(clip_returned[s.step], rel=1e-5)
    assert any(n > GRAD_CLIP * 1.5 for n in clip_returned), "the loop's clipping must have acted"
    assert all(s.loss_scale == pytest.approx(1024.0) for s in steps) and not any(s.amp_skipped for s in steps)
    assert all(s.clip_mode == "off" for s in steps)
    # Tied weights count once, in their first owner.
    assert "lm_head" not in out["layers"] and "wte" in out["layers"]  # type: ignore[operator]


def test_an_lr_factor_holds_on_top_of_a_loop_that_sets_the_lr_every_iteration() -> None:
    out = _train()
    steps: list[StepStats] = out["steps"]  # type: ignore[assignment]
    used: list[float] = out["used_lr"]  # type: ignore[assignment]
    (result,) = out["results"]  # type: ignore[misc]
    assert result.ok and result.step == 20
    sampled = {s.step: s for s in steps}  # every step at every=1; at the defaults, those the budget chose
    assert 0 in sampled and len(sampled) >= 3
    for it in range(ITERS):
        want = get_lr(it) * (0.1 if it >= 20 else 1.0)
        assert used[it] == pytest.approx(want), it
        if it in sampled:
            assert sampled[it].lrs[0] == pytest.approx(want)
            assert sampled[it].schedule_lrs[0] == pytest.approx(get_lr(it))
    # Warm-up and decay keep their shape under the override: step 30 is 0.1 of the schedule, not pinned.
    assert used[30] == pytest.approx(0.1 * get_lr(30)) and used[30] != pytest.approx(used[21])


def test_a_skipped_amp_step_is_recorded_without_a_stepped_norm() -> None:
    out = _train(inject_inf_at=7)
    steps: list[StepStats] = out["steps"]  # type: ignore[assignment]
    assert steps[7].amp_skipped and math.isnan(steps[7].stepped_norm)
    assert steps[8].loss_scale == pytest.approx(512.0), "the scaler halved its scale, untouched by gradtui"
    assert not any(s.amp_skipped for s in steps if s.step != 7)


def test_mon_step_after_the_loops_clipping_warns_once() -> None:
    out = _train(mon_before_clip=False)
    logs: list[str] = out["logs"]  # type: ignore[assignment]
    unscaled = [t for t in logs if "after scaler.unscale_" in t]
    clipped = [t for t in logs if "look clipped already" in t]
    assert len(unscaled) == 1 and len(clipped) == 1


def test_two_optimizers_one_stream_and_commands_that_name_one() -> None:
    """A GAN-shaped loop: two optimizers, each stepping its own network every iteration."""
    torch.manual_seed(0)
    gen, disc = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4)), nn.Sequential(nn.Linear(4, 1))
    model = nn.ModuleDict({"gen": gen, "disc": disc})
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.SGD([{"params": disc[0].weight}, {"params": disc[0].bias, "lr": 0.05}], lr=0.1)
    mon = gradtui.watch(model, [opt_g, opt_d], queue=True, detectors=False, detail_every=1)
    used: dict[str, list[list[float]]] = {"g": [], "d": []}
    opt_g.register_step_pre_hook(lambda o, a, k: used["g"].append([g["lr"] for g in o.param_groups]))
    opt_d.register_step_pre_hook(lambda o, a, k: used["d"].append([g["lr"] for g in o.param_groups]))
    for it in range(6):
        if it == 2:
            mon.send(gradtui.SetLR(factor=0.5, optimizer=1))
        if it == 3:
            mon.send(gradtui.SetLR(value=0.3, optimizer=1, group=1))
        if it == 4:
            mon.send(gradtui.SetLR(factor=2.0, optimizer=7))
            mon.send(gradtui.Release("lr"))
        z = torch.randn(8, 4)
        loss = disc(gen(z)).mean() + disc(torch.randn(8, 4)).pow(2).mean()
        opt_g.zero_grad()
        opt_d.zero_grad()
        loss.backward()
        mon.step(loss)
        opt_g.step()
        opt_d.step()
    assert mon.events is not None
    events = mon.events.drain()
    mon.close()
    start = events[0]
    assert start.lr_groups == ("opt0.0", "opt1.0", "opt1.1")
    steps = [e for e in events if isinstance(e, StepStats)]
    assert [s.lrs for s in steps] == [
        (1e-3, 0.1, 0.05), (1e-3, 0.1, 0.05), (1e-3, 0.05, 0.025), (1e-3, 0.05, 0.3), (1e-3, 0.1, 0.05),
        (1e-3, 0.1, 0.05),
    ]
    assert used["g"] == [[1e-3]] * 6 and used["d"][3] == [0.05, 0.3] and used["d"][4] == [0.1, 0.05]
    results = [e for e in events if isinstance(e, CommandResult)]
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].message == "unknown optimizer 7 (the run watches 2)"
    assert results[1].message == "lr 0.025 -> 0.3 (optimizer 1, group 1)"
    # Both optimizers' updates are measured: every layer moved.
    updates = [e for e in events if type(e).__name__ == "UpdateStats"]
    assert updates and all((u.update_ratio > 0).all() for u in updates)  # type: ignore[attr-defined]


def test_mon_step_with_a_scaler_leaves_the_scaler_alone_as_its_docstring_says() -> None:
    """`Monitor.step(scaler=...)` never calls `scaler.unscale_` (the docstring once said it did): the
    loop's own unscale_ still works after it, and the norm is the unscaled one."""
    from torch.amp.grad_scaler import OptState

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    mon = gradtui.watch(model, opt, queue=True, every=1, detectors=False)
    loss = nn.functional.mse_loss(model(torch.randn(16, 4)), torch.randn(16, 1))
    scaler.scale(loss).backward()
    mon.step(loss, scaler=scaler)
    assert OptState.READY is scaler._per_optimizer_states[id(opt)]["stage"]  # not unscaled by gradtui
    scaler.unscale_(opt)  # raises if unscale_ had been called already this step
    true_norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    scaler.step(opt)
    scaler.update()
    mon.close()
    assert mon.events is not None
    (stats,) = [e for e in mon.events.drain() if isinstance(e, StepStats)]
    assert stats.global_norm == pytest.approx(true_norm, rel=1e-5)
    doc = gradtui.Monitor.step.__doc__ or ""
    assert "never calls" in doc and "(`scaler.unscale_(optimizer)`" not in doc


def _twin(
    build: Callable[[], nn.Module],
    loss_of: Callable[[nn.Module], torch.Tensor],
    options: dict[str, object],
    watched: bool,
    steps: int,
    create_graph: bool = False,
) -> tuple[nn.Module, list[float], list[StepStats]]:
    """Train a fresh `build()` with SGD (momentum), watched with `options` or not (then clipped by
    torch's `clip_grad_norm_` where `options` clips by norm): the model, the norm of what each
    optimizer step was handed (its pre-step hook, torch's `get_total_norm`), the sampled steps."""
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    handed: list[float] = []

    def pre_step(o: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
        handed.append(float(torch.nn.utils.get_total_norm(grads)))

    opt.register_step_pre_hook(pre_step)
    mon = gradtui.watch(model, opt, queue=True, detectors=False, **options) if watched else None  # type: ignore[arg-type]
    clip = options.get("clip")
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model)
        loss.backward(create_graph=create_graph)
        if mon is not None:
            mon.step(loss)
        elif isinstance(clip, tuple):
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip[1])
        opt.step()
    if mon is None:
        return model, handed, []
    mon.close()
    assert mon.events is not None
    return model, handed, [e for e in mon.events.drain() if isinstance(e, StepStats)]


@pytest.mark.parametrize("options", [{}, {"every": 1}, {"every": 1, "detail_every": 1}, {"clip": ("norm", 0.05)}])
def test_a_loop_that_backpropagates_with_create_graph_is_measured(options: dict[str, object]) -> None:
    """`loss.backward(create_graph=True)` (a gradient penalty, a Hessian-aware optimizer) leaves
    gradients that are part of a graph: the probe measures their values (torch's own norm, read
    by the optimizer's pre-step hook) and the run trains as an unwatched twin does."""

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))

    x, y = torch.randn(64, 8), torch.randn(64, 1)

    def loss_of(model: nn.Module) -> torch.Tensor:
        return nn.functional.mse_loss(model(x), y)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain, plain_handed, _ = _twin(build, loss_of, options, False, 40, create_graph=True)
        watched, handed, steps = _twin(build, loss_of, options, True, 40, create_graph=True)
    # Torch's own warning about the graph create_graph keeps may come; none from the probe's reductions.
    assert not [w for w in caught if "create_graph" not in str(w.message)], [str(w.message) for w in caught]
    assert steps, "no step was sampled"
    for s in steps:
        if "clip" in options:  # what backward produced, then clipped by gradtui to what the optimizer got
            assert s.global_norm > 0.05 and handed[s.step] == pytest.approx(0.05, rel=1e-5)
        else:
            assert s.global_norm == pytest.approx(handed[s.step], rel=1e-6)
    assert handed == pytest.approx(plain_handed, rel=1e-6)
    for a, b in zip(plain.parameters(), watched.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("options", [{}, {"every": 1, "detail_every": 1}, {"every": 1, "clip": ("norm", 0.5)}])
def test_a_complex_valued_net_is_measured_by_its_real_and_imaginary_parts(options: dict[str, object]) -> None:
    """Complex parameters (signal processing, complex-valued nets): the L2 norms are the complex
    ones (torch's own), the per-value statistics count the real and imaginary parts apart, and an
    unclipped run trains as its unwatched twin does."""

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(6, 12, dtype=torch.complex64), nn.Linear(12, 3, dtype=torch.complex64))

    x, y = torch.randn(32, 6, dtype=torch.complex64), torch.randn(32, 3, dtype=torch.complex64)

    def loss_of(model: nn.Module) -> torch.Tensor:
        return (model(x) - y).abs().pow(2).mean()

    plain, plain_handed, _ = _twin(build, loss_of, options, False, 30)
    watched, handed, steps = _twin(build, loss_of, options, True, 30)
    assert steps, "no step was sampled"
    for s in steps:
        # What backward produced; the optimizer got it clipped to the threshold where gradtui clips.
        want = min(s.global_norm, 0.5) if "clip" in options else s.global_norm
        assert handed[s.step] == pytest.approx(want, rel=1e-5)
    assert "clip" not in options or any(s.global_norm > 0.5 for s in steps), "the clipping never acted"
    detail = [s for s in steps if s.zero_frac is not None and s.grad_hist is not None]
    if options.get("detail_every") == 1:
        assert len(detail) == len(steps)
    for s in detail:
        assert s.zero_frac is not None and s.grad_hist is not None
        assert ((0 <= s.zero_frac) & (s.zero_frac <= 1)).all()
        # every part of every value in its histogram: 2 x (6 x 12 + 12), 2 x (12 x 3 + 3)
        assert s.grad_hist.sum(axis=1).tolist() == [2 * 84, 2 * 39]
    if "clip" not in options:
        assert handed == pytest.approx(plain_handed, rel=1e-6)
        for a, b in zip(plain.parameters(), watched.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
