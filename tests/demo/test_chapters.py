"""Every chapter of the tour tells the truth: each story's claims, checked against what the
viewer holds after training the chapter's scenario (fewer steps where the claim shows sooner,
no pacing), with the keys the story asks for pressed through the viewer's own source.

One test per chapter, named after it (`test_chapter_relu_explode_clip` for relu-explode-clip);
the claims are quoted above the lines that check them.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import pytest
import torch
from chapter_helpers import Keys, Watched, watch_chapter

from gradtui.demo.catalog import CATALOG, TOUR
from gradtui.demo.scenarios import get as get_scenario
from gradtui.model.commands import Command, SetClip, SetLR
from gradtui.model.events import Alert
from gradtui.sources.base import Source

LN2, LN4, LN10 = math.log(2), math.log(4), math.log(10)
GRADIENT_KINDS = ("vanishing", "exploding", "nonfinite", "dead")
EPS = 1e-5


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny models: one thread is faster and leaves the other core to the rest of the suite.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def plain(name: str, steps: int) -> Watched:
    """A chapter left alone (no keys), trained once per module and shared by the tests that compare."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return watch_chapter(name, steps)
    finally:
        torch.set_num_threads(before)


def medians(w: Watched, last: int) -> np.ndarray:
    """Each row's median raw norm over the last `last` steps (what `s` shows on the heatmap)."""
    return np.median(w.norms()[:, -last:], axis=1)


def jumps(values: Sequence[float] | np.ndarray, before: int = 10) -> np.ndarray:
    """Each step's value over the median of the `before` steps before it (NaN for the first
    `before` steps): how far the step jumps above its recent level."""
    x = np.asarray(values, np.float64)
    out = np.full(len(x), np.nan)
    out[before:] = x[before:] / np.median(np.lib.stride_tricks.sliding_window_view(x[:-1], before), axis=1)
    return out


def spiking(losses: Sequence[float]) -> int:
    """Steps at which the loss is above three times the run's median."""
    return int(np.sum(np.asarray(losses) > 3 * np.median(losses)))


def burst_steps(w: Watched) -> list[int]:
    """Steps after the first ten at which an exploding flag comes up (on any row), in order."""
    return sorted({a.step for a in w.raised("exploding") if a.step > 10})


def loss_at_first_burst(w: Watched) -> float:
    """How far the loss jumps above its recent level at the first burst after the first ten steps
    (its first step with an exploding flag, and the two after it)."""
    t = burst_steps(w)[0]
    return float(np.max(jumps(w.losses)[t : t + 3]))


def spike_at_first_burst(w: Watched) -> bool:
    """Whether the loss-spike flag comes up with that burst."""
    t = burst_steps(w)[0]
    return any(t <= a.step <= t + 2 for a in w.raised("loss_spike"))


def press_at_first_flag(kind: str, cmd: Command) -> Keys:
    """A user who presses a key as soon as the `kind` flag comes up."""
    pressed: list[int] = []

    def keys(step: int, w: Watched, source: Source) -> Command | None:
        if not pressed and w.flagged(kind):
            pressed.append(step)
            return cmd
        return None

    return keys


def active_at(alerts: list[Alert], step: int, kind: str) -> set[str | None]:
    """Units flagged `kind` at `step` (the alert log read up to that step)."""
    up: set[str | None] = set()
    for a in alerts:
        if a.step > step:
            break
        if a.kind == kind:
            (up.add if a.active else up.discard)(a.layer)
    return up


def test_every_chapter_of_the_tour_has_its_claims_checked() -> None:
    tests = [name for name in globals() if name.startswith("test_chapter_")]
    tested = {name.removeprefix("test_chapter_").replace("_", "-") for name in tests}
    assert tested == set(TOUR)


# ---------------------------------------------------------------- vanishing


def test_chapter_sigmoid() -> None:
    w = plain("sigmoid", 120)
    # "every layer toward the input sees about ten times less than the one above"
    m = medians(w, 50)
    assert np.all(m[1:] / m[:-1] > 8)
    # "within a few dozen steps the rows of the first two layers get the vanishing flag"
    assert w.flagged("vanishing") == {"0", "2"}
    assert all(a.step < 36 for a in w.raised("vanishing"))
    assert w.raised("exploding", "nonfinite", "dead") == []
    # "while the loss sits at ln 2 = 0.69"
    assert abs(w.mean_loss(20) - LN2) < 0.03
    # "the first layer's is more than a thousand times below the last one's"
    assert m[0] * 1000 < m[-1]


def test_chapter_sigmoid_relu_he() -> None:
    w = plain("sigmoid-relu-he", 300)
    # "Every row of the heatmap stays calm (... within a factor of ten or so), no flag is raised"
    assert w.raised() == []
    m = medians(w, 100)
    assert m.max() / m.min() < 12
    # "the loss falls as the net learns the two circles"
    assert w.mean_loss(20) < 0.15 and w.mean_loss(20) < 0.3 * float(np.mean(w.losses[:20]))


def test_chapter_sigmoid_glorot() -> None:
    w = plain("sigmoid-glorot", 300)
    # "within a factor of about four per hidden layer: the first layers are dimmer than the last, not dark"
    m = medians(w, 100)
    hidden = m[1:] / m[:-1]
    assert np.all((hidden[1:] > 2.5) & (hidden[1:] < 6)), hidden
    assert np.all(hidden > 1)
    assert m[0] > 10 * medians(plain("sigmoid", 120), 50)[0], "as dim as the vanishing net's first layer"
    # "No flag ... Yet the loss stays near 0.69 for these 300 steps"
    assert w.raised() == []
    assert abs(w.mean_loss(20) - LN2) < 0.03


def test_chapter_deep_sigmoid() -> None:
    w = plain("deep-sigmoid", 40)
    # "each one divides it by four or more"
    m = medians(w, 20)
    assert np.all(m[1:] / m[:-1] > 4)
    # "the first rows of the heatmap get the vanishing flag within a few dozen steps"
    flagged = w.flagged("vanishing")
    assert {"0", "2", "4"} <= flagged and "20" not in flagged
    assert all(a.step < 36 for a in w.raised("vanishing"))
    # "orders of magnitude below the last rows'", "the loss stays near ln 10 = 2.3"
    assert m[0] < 1e-4 * m[-1]
    assert abs(w.mean_loss(10) - LN10) < 0.1


def test_chapter_deep_sigmoid_cure() -> None:
    w = plain("deep-sigmoid-cure", 60)
    # "Every row stays calm (... within about two orders of magnitude, not nine), no flag is raised"
    assert w.raised() == []
    m = medians(w, 30)
    assert math.log10(m.max() / m.min()) < 2.5
    sick = medians(plain("deep-sigmoid", 40), 20)
    assert math.log10(sick.max() / sick.min()) > 8
    # "the loss falls fast"
    assert np.mean(w.losses[:5]) > 0.5 and w.mean_loss(10) < 0.1


# ---------------------------------------------------------------- exploding


def test_chapter_relu_explode() -> None:
    w = watch_chapter("relu-explode", 200, stop_after_nonfinite=3)
    lr = w.series("lr")
    # "the learning rate warms up to 0.02 over 30 steps"
    assert lr[0] < lr[10] < lr[29] and lr[29] == pytest.approx(0.02) and lr[-1] == pytest.approx(0.02)
    # "Watch the global norm climb by orders of magnitude"
    nan_step = w.store.first_nonfinite_step
    assert nan_step is not None, "the run did not blow up"
    g = w.series("global_norm")
    assert np.nanmax(g[np.isfinite(g)]) > 1e3 * g[0]
    # "the exploding flag comes up a few steps before the first NaN"
    first = min(a.step for a in w.raised("exploding"))
    assert first <= nan_step - 2
    assert None in active_at(w.store.alerts, nan_step - 2, "exploding")
    # "Press c to clip the gradient norm, or - to halve the learning rate, before it is too late"
    for cmd in (SetClip("norm", 1.0), SetLR(factor=0.5)):
        saved = watch_chapter("relu-explode", 200, press_at_first_flag("exploding", cmd))
        assert saved.store.results and saved.store.results[0].ok and saved.store.results[0].step <= first + 1
        if isinstance(cmd, SetClip):
            assert saved.store.first_nonfinite_step is None and all(np.isfinite(saved.losses))
            assert saved.mean_loss(20) < 0.5 * float(np.mean(saved.losses[:20]))
            assert saved.store.last is not None and saved.store.last.clip_mode == "norm"
        else:
            # Halved once, the rate sits at the stability limit and the run is chaotic from there:
            # finite for all 200 steps on every CPU kernel and thread count tried, but in 4 of 57
            # runs with every weight scaled by 1 + 2^-24 N(0, 1) after each step it turned NaN at
            # step 96, 112, 117 or 160 (where the bare run does at step 26 or 27).
            assert all(np.isfinite(saved.losses[: 2 * nan_step])), cmd


def test_chapter_relu_explode_clip() -> None:
    w = plain("relu-explode-clip", 200)
    # "Clipping rescales the whole gradient whenever its norm passes 1.0"
    assert np.all(w.series("clipped_norm") <= 1.0 + EPS)
    # "The raw norms (press s) are still large at first ... but they settle as the loss falls"
    g = w.series("global_norm")
    assert np.median(g[:20]) > 10 and np.median(g[-50:]) < 0.6 * np.median(g[:20])
    assert w.mean_loss(20) < 0.1 * float(np.mean(w.losses[:20]))
    assert w.store.first_nonfinite_step is None
    assert [a for a in w.raised() if a.step >= 30] == []  # none after the warm-up
    # "Press c to turn clipping off and watch the run blow up"
    off = watch_chapter("relu-explode-clip", 100, lambda step, w, s: SetClip("off") if step == 60 else None)
    assert off.store.results[-1].kind == "set_clip" and off.store.results[-1].ok
    nan_step = off.store.first_nonfinite_step
    assert nan_step is not None and 60 < nan_step < 80


def test_chapter_relu_explode_guard() -> None:
    w = plain("relu-explode-guard", 200)
    bare = plain("relu-explode", 200)
    assert bare.store.first_nonfinite_step is not None  # the run it heals does blow up
    rollbacks = [g for g in w.store.guard if g.action == "rollback"]
    # "it puts the last healthy copy back and cuts the learning rate to a quarter, on top of the warm-up"
    assert rollbacks, "no rollback"
    lr, schedule = w.series("lr"), w.series("schedule_lr")
    cut = 0.25 ** len(rollbacks)
    assert lr[-1] == pytest.approx(cut * 0.02) and schedule[-1] == pytest.approx(0.02)
    assert lr[29] == pytest.approx(cut * schedule[29]) or rollbacks[-1].step > 29
    # "When the exploding flag stays critical for 3 steps, or a step turns NaN"
    first = min(a.step for a in w.raised("exploding"))
    critical = [a for a in w.raised("exploding") if a.level == "critical"]
    assert critical and rollbacks[0].step <= critical[0].step + 4
    # "Each rollback is a line in the log (⟲, the step it went back to, the new learning rate) and an R"
    for r in rollbacks:
        assert r.detail.startswith("rolled back to step ") and " -> " in r.detail
        assert any(m.step == r.step and m.kind == "rollback" for m in w.store.markers)
    # "The run ends finite and its loss keeps falling"
    assert all(np.isfinite(w.losses[-50:]))
    assert w.mean_loss(20) < w.losses[first] and w.mean_loss(20) < float(np.mean(w.losses[100:120]))


class Overflow(NamedTuple):
    """The first non-finite forward output of a run, as plain torch hooks see it."""

    step: int
    module: str
    inf: bool
    """Its output held an Inf (else only NaN)."""
    input_max: float
    others_max: float
    """The largest |output| of every other layer at that step."""
    grads_finite_before: bool
    """Every gradient of every step before it was finite."""
    softplus_finite: bool
    """torch's own F.softplus of the same pre-activation is finite."""


def first_overflow(seed: int, steps: int = 200) -> Overflow | None:
    """Train softplus-overflow with no monitor, hooks on every module that owns parameters (the
    reference: a module's output checked as it is made, in execution order)."""
    run = get_scenario("softplus-overflow").build(seed, "cpu")
    torch.manual_seed(seed)
    found: list[Overflow] = []
    outputs: dict[str, float] = {}
    state = {"step": 0, "grads_finite": True}

    def hook(name: str) -> Callable[[torch.nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def check(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            with torch.no_grad():
                outputs[name] = float(out.abs().max())
                if found or bool(torch.isfinite(out).all()):
                    return
                z = torch.nn.functional.linear(inputs[0], module.weight, module.bias)
                others = max((v for k, v in outputs.items() if k != name), default=0.0)
                found.append(
                    Overflow(
                        state["step"],
                        name,
                        bool(torch.isinf(out).any()),
                        float(inputs[0].abs().max()),
                        others,
                        bool(state["grads_finite"]),
                        bool(torch.isfinite(torch.nn.functional.softplus(z)).all()),
                    )
                )

        return check

    for name, module in run.model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            module.register_forward_hook(hook(name))
    for step in range(steps):
        state["step"] = step
        outputs.clear()
        run.train_step(None)
        if found:
            return found[0]
        grads = [p.grad for p in run.model.parameters() if p.grad is not None]
        state["grads_finite"] = bool(state["grads_finite"]) and all(bool(torch.isfinite(g).all()) for g in grads)
    return None


@functools.cache
def overflowed() -> Watched:
    return watch_chapter("softplus-overflow", 200, stop_after_nonfinite=3)


def test_chapter_softplus_overflow() -> None:
    w = overflowed()
    nan_step = w.store.first_nonfinite_step
    assert nan_step is not None and nan_step < 100, "the run did not blow up"
    # "the gradients grow large but stay finite, until one forward pass"
    g = w.series("global_norm")
    assert np.isfinite(g[:nan_step]).all() and np.isfinite(w.losses[:nan_step]).all()
    assert g[:nan_step].max() > 10 * g[0]
    # "its output is Inf, the loss goes non-finite, and at that step every row of the heatmap turns × at once"
    assert not math.isfinite(w.losses[nan_step])
    steps = list(w.store.steps())
    counts = w.store.window("nonfinite")
    assert (counts[steps.index(nan_step)] > 0).all() and (counts[steps.index(nan_step - 1)] == 0).all()
    # "The gradients cannot say where it started": the first non-finite gradients are on every layer,
    # the input layer's too.
    assert set(w.store.first_nonfinite_layers) == {info.name for info in w.store.layers}
    # "Armed by the alarm": an exploding alarm comes up before that step.
    assert any(a.level != "info" and a.step < nan_step for a in w.raised("exploding"))
    # "names the first to go bad ...: layer 8's forward output, Inf" (plain torch hooks, seeds 0-2: the
    # overflow is exp's, so no other layer is anywhere near float32's 3.4e38 then), and "torch's own
    # F.softplus ... never overflows" on the same pre-activation.
    for seed in range(3):
        ref = first_overflow(seed)
        assert ref is not None, seed
        assert (ref.module, ref.inf, ref.grads_finite_before, ref.softplus_finite) == ("8", True, True, True), seed
        assert ref.others_max < 1e30 and math.isfinite(ref.input_max), (seed, ref)
        if seed == 0:
            assert ref.step == nan_step  # the viewer's run is the same run


@pytest.mark.skipif(
    importlib.util.find_spec("gradtui.probe.capture") is None,
    reason="the probe's deep capture (gradtui.probe.capture) is not built yet: the origin cannot be named",
)
def test_softplus_overflow_origin_is_the_one_plain_torch_finds() -> None:
    """The chapter's point: gradtui names the module the reference names, at its step."""
    w = overflowed()
    ref = first_overflow(0)
    assert ref is not None and w.store.origins, "no origin on the record"
    origin = w.store.origins[0]
    assert (origin.step, origin.module, origin.direction, origin.kind) == (ref.step, ref.module, "forward", "inf")
    assert origin.layer == w.layer("8")
    assert origin.words().startswith(f"first non-finite: 8 forward output, step {ref.step}, Inf")
    # "Armed by the alarm (━ on the heatmap's axis ...)": a capture ran over that step.
    armed = [c for c in w.store.captures if not c.ended]
    assert any(c.start <= ref.step < c.start + c.steps for c in armed)
    # "Press s for what it measured: each layer's output, rms(a) and max|a|, over the capture's steps."
    for stat in ("act_rms", "act_max"):
        assert np.isfinite(w.store.window(stat)).all(axis=1).any(), stat  # a step with every layer's value


# The deep linear runs (Adam on a product of 20 matrices) are chaotic: a difference in the last bit
# of a weight (another CPU's kernels, another thread count) grows until, from about step 30 on,
# each machine trains a different run. The first burst after the warm start (step 27 here, 22
# clipped) comes before that and is the same everywhere; what follows is checked only for what
# every such run shows. Measured on 22 runs of the chapter (AVX-512, AVX2 and plain ATen kernels,
# 1 and 2 threads, and 16 runs with every weight scaled by 1 + 2^-24 N(0, 1) after each step): the
# first burst is 228x to 232x its recent level and lifts the loss 5.1x with a loss-spike flag in
# every run, while deep-linear's loss peaks anywhere from 7x to 5,100x its median later on.


def test_chapter_deep_linear() -> None:
    w = plain("deep-linear", 300)
    # "Watch the global norm burst by orders of magnitude (the exploding flag, from the first steps)"
    g = w.series("global_norm")
    assert np.nanmax(jumps(g)) > 100  # 228x to 232x, at step 27
    assert np.max(g) > 100 * np.median(g[:5])  # 636x to 642,000x
    assert min(a.step for a in w.raised("exploding")) < 5  # step 2 in every run measured
    # "and the loss line spike": flagged, and 5.1x its recent level at the first burst (more later)
    assert w.raised("loss_spike") and np.nanmax(jumps(w.losses)) > 3
    assert burst_steps(w), "bursts go on after the first steps"
    # "Press - early to halve the learning rate: smaller moves compound less, and the bursts stop"
    calm = watch_chapter("deep-linear", 300, lambda step, w, s: SetLR(factor=0.5) if step == 5 else None)
    assert burst_steps(calm) == [] and np.nanmax(jumps(calm.series("global_norm"))) < 30  # 13.8x
    assert calm.raised("loss_spike") == [] and max(calm.losses[20:]) < 5  # 2.33


def test_chapter_deep_linear_clip() -> None:
    w = plain("deep-linear-clip", 300)
    free = plain("deep-linear", 300)
    # "Clipping bounds each gradient before Adam sees it, and the loss no longer spikes"
    assert np.all(w.series("clipped_norm") <= 1.0 + EPS)
    late, unclipped = burst_steps(w), burst_steps(free)
    assert late and unclipped, "bursts after the first steps, clipped or not"
    # At each run's first burst (see above) deep-linear's loss jumps 5.1x its recent level and is
    # flagged; the clipped run's stays at 1.99x, unflagged.
    assert loss_at_first_burst(free) > 3 and loss_at_first_burst(w) < 3
    assert spike_at_first_burst(free) and not spike_at_first_burst(w)
    # After it the clipped loss may still get a stray flag (at one step from 42 to 229 in 12 of the
    # 22 runs measured), but it spends at most 2 steps above 3x its median; deep-linear's, 6 to 123.
    assert spiking(w.losses) <= 5 and spiking(w.losses) < spiking(free.losses)
    # "they still jump far above their recent level (192x at the first burst) and raise the exploding
    # flag about as often as in deep-linear": at 2 to 4 steps after the first ten, deep-linear at 2 to 5
    assert np.max(jumps(w.series("global_norm"))[late[0] : late[0] + 3]) > 30
    assert len(unclipped) / 3 <= len(late) <= len(unclipped) * 3
    # "The cure for the jumps themselves is a smaller learning rate (press -)": see test_chapter_deep_linear.


# ---------------------------------------------------------------- recurrent


def lane_medians(w: Watched, last: int) -> np.ndarray:
    """The lanes' median norms (h[t=...] rows, first to last time step)."""
    return medians(w, last)[-w.store.n_lanes :]


def test_chapter_rnn_tanh() -> None:
    w = plain("rnn-tanh", 100)
    # "the loss stays near ln 4 = 1.39"
    assert abs(w.mean_loss(20) - LN4) < 0.05
    # "The recurrent layer is a single row of the heatmap"
    layers = w.store.layers[: len(w.store.layers) - w.store.n_lanes]
    assert [info.name for info in layers] == ["rnn", "head"]
    # "h[t=0] to h[t=69] ... fall by orders of magnitude from t=69 back to t=0"
    names = [info.name for info in w.store.layers[-w.store.n_lanes :]]
    assert names[0] == "h[t=0]" and names[-1] == "h[t=69]"
    lanes = lane_medians(w, 80)
    assert lanes[0] < 1e-3 * lanes[-1] and np.all(np.diff(np.log10(lanes)) > 0)


def test_chapter_rnn_gru() -> None:
    w = plain("rnn-gru", 270)
    # "Clipping at 1.0 guards against the bursts recurrent nets are known for"
    assert np.all(w.series("clipped_norm") <= 1.0 + EPS)
    # "The rows h[t=0] to h[t=69] show the gradient reaching every time step, the first one too"
    lanes = lane_medians(w, 150)
    assert lanes[0] > 0.5 * lanes[-1]
    assert lanes[0] > 1e3 * lane_medians(plain("rnn-tanh", 100), 80)[0]
    # "Watch the loss sit at ln 4 for a while, then drop once the net finds the first token"
    assert abs(float(np.mean(w.losses[:100])) - LN4) < 0.05
    assert w.mean_loss(10) < 0.2


# ---------------------------------------------------------------- learning rate


def test_chapter_high_lr() -> None:
    halve_at = 110
    w = watch_chapter("high-lr", 150, lambda step, w, s: SetLR(factor=0.5) if step == halve_at else None)
    # "The first updates overshoot, the gradient bursts (exploding flag), and the loss stays at chance"
    assert min(a.step for a in w.raised("exploding")) < 5
    assert abs(w.mean_loss(20) - LN10) < 0.15
    # "Within a hundred steps ... the whole convolutional trunk gets an exactly-zero gradient, then the
    # dead flag, and only the head still learns"
    trunk = {"conv1", "bn1", "conv2", "bn2"}
    dead = w.raised("dead")
    assert {a.layer for a in dead} == trunk and all(a.step < 100 for a in dead)
    g = w.norms()
    assert np.mean(g[:4, 80:halve_at] == 0) > 0.9 and np.all(g[4] > 0)
    # "Press - to halve the rate and watch: dead units do not come back"
    assert w.series("lr")[-1] == pytest.approx(1.5)
    assert np.mean(g[:4, halve_at + 1 :] == 0) > 0.9
    assert w.flagged("dead") == trunk


# ---------------------------------------------------------------- optimisers


def test_chapter_opt_sgd() -> None:
    w = plain("opt-sgd", 300)
    # "The baseline: each step moves along the gradient, no memory."
    assert w.raised() == []
    assert w.mean_loss(30) < 0.8 * float(np.mean(w.losses[:30]))


def test_chapter_opt_momentum() -> None:
    w, sgd = plain("opt-momentum", 300), plain("opt-sgd", 300)
    # "faster along consistent directions": lower loss than plain SGD, early and late
    assert np.mean(w.losses[90:110]) < 0.5 * np.mean(sgd.losses[90:110])
    assert w.mean_loss(30) < 0.5 * sgd.mean_loss(30)
    assert w.raised() == []


def test_chapter_opt_adam() -> None:
    w, sgd = plain("opt-adam", 300), plain("opt-sgd", 300)
    # "Adam scales each parameter's step by its gradient's running size: every layer moves at one pace."
    def spread(run: Watched) -> float:
        ratio = np.nanmedian(np.asarray(run.store.window("update_ratio"), np.float64), axis=0)
        return float(ratio.max() / ratio.min())

    assert spread(w) < 3 and spread(w) < 0.5 * spread(sgd)
    assert w.mean_loss(30) < 0.5 * sgd.mean_loss(30)


def test_chapter_opt_step_lr() -> None:
    w = plain("opt-step-lr", 300)
    # "Watch the LR line step down and the loss settle lower after each drop."
    lr = w.series("lr")
    assert lr[99] == pytest.approx(0.1) and lr[100] == pytest.approx(0.01) and lr[200] == pytest.approx(0.001)
    assert set(np.round(lr, 6)) == {0.1, 0.01, 0.001}
    settled = [np.median(w.losses[a : a + 50]) for a in (50, 150, 250)]
    assert settled[0] > settled[1] > settled[2]


def test_chapter_opt_exp_lr() -> None:
    w = plain("opt-exp-lr", 300)
    # "A smooth decay: big steps early, fine ones late."
    lr = w.series("lr")
    assert lr[0] == pytest.approx(0.1) and lr[-1] == pytest.approx(0.001, rel=0.05)
    assert np.all(np.diff(lr) < 0)


# ---------------------------------------------------------------- healthy


def test_chapter_residual_mlp() -> None:
    w = plain("residual-mlp", 300)
    # "every row of the heatmap calm, no layer flagged"
    assert [a for a in w.raised() if a.layer is not None] == []
    # "every layer in one band, the whole band drifting down together as the loss goes to zero"
    # Near zero loss Adam now and then throws the run back up for a few dozen steps before it
    # settles again: somewhere after step 150 in 4 of 20 runs with every weight scaled by
    # 1 + 2^-24 N(0, 1) after each step (a stand-in for another CPU's rounding). So the band and the
    # loss are read where the run settles between those bumps, the lower quartile of the last 100
    # steps; over those runs and this one: every layer's drift 0.023 to 0.22, their spread 2.4x to
    # 4.4x, the band 1.72 to 1.82 decades wide, the loss 0.0025 to 0.0076.
    g = w.norms()
    early, late = np.median(g[:, 10:40], axis=1), np.percentile(g[:, -100:], 25, axis=1)
    drift = late / early
    assert np.all(drift < 0.5) and drift.max() / drift.min() < 10
    assert math.log10(late.max() / late.min()) < 2
    assert np.percentile(w.losses[-100:], 25) < 0.02


def test_chapter_cnn_bn() -> None:
    w = plain("cnn-bn", 150)
    # "The BatchNorm rows ... their gradients move with the conv layers around them"
    g = np.log10(w.norms())
    names = [info.name for info in w.store.layers]
    for bn, conv in (("bn1", "conv1"), ("bn2", "conv2")):
        assert np.corrcoef(g[names.index(bn)], g[names.index(conv)])[0, 1] > 0.5, bn
    # "No flag, and the loss goes to near zero."
    assert w.raised() == []
    assert w.mean_loss(20) < 0.05


def test_chapter_lstm() -> None:
    w = plain("lstm", 150)
    # "Watch the loss fall to near zero with no flag on any row"
    assert w.raised() == []
    assert w.mean_loss(20) < 0.02
    # "h[t=0] to h[t=5] ... the first token's is within a factor of ten or so of the last one's"
    names = [info.name for info in w.store.layers[-w.store.n_lanes :]]
    assert names == [f"h[t={t}]" for t in range(6)]
    lanes = lane_medians(w, 150)
    assert lanes[0] > 0.08 * lanes[-1]


def test_the_stories_name_only_keys_and_chapters_that_exist() -> None:
    from gradtui.demo.launcher import chapter_of

    for name in TOUR:
        story = CATALOG[name].narrative
        for other in CATALOG:
            if f"{other} " in story or f"{other}," in story or f"({other})" in story:
                assert other in TOUR, (name, other)
        assert set(chapter_of(name).keys) <= {"c", "m", "]", "[", "+", "-", "l", "p", "s", "d"}
