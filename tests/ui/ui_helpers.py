"""Helpers for the viewer tests: scripted event streams and apps that poll on demand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradtui.model.events import Event, LayerInfo, RunStart, StepStats
from gradtui.model.store import RunStore
from gradtui.sources.synthetic import ScriptedSource, SyntheticRun
from gradtui.ui.app import GradTUIApp, make_app

MANUAL = 0.001
"""refresh_hz that never fires within a test: the test drives `app.poll_source()` itself."""


def run_start(n_layers: int, *, lrs: tuple[float, ...] = (0.1,), names: list[str] | None = None) -> RunStart:
    """A RunStart for `n_layers` layers named fc0.. (or `names`)."""
    names = names or [f"fc{i}" for i in range(n_layers)]
    return RunStart(
        run="test-run",
        pid=1,
        started=1000.0,
        layers=tuple(LayerInfo(n, "Linear", 10) for n in names),
        lrs=lrs,
        clip_mode="off",
        clip_threshold=1.0,
        every=1,
        detail_every=10,
        device="cpu",
    )


def step_stats(
    step: int,
    grad_norm: list[float] | np.ndarray,
    *,
    nonfinite: list[int] | np.ndarray | None = None,
    has_grad: list[bool] | np.ndarray | None = None,
    mean_abs: list[float] | np.ndarray | None = None,
    loss: float = 1.0,
) -> StepStats:
    """A StepStats at `step` with the given per-layer norms."""
    g = np.asarray(grad_norm, dtype=np.float64)
    n = g.size
    nf = np.zeros(n, np.int64) if nonfinite is None else np.asarray(nonfinite, np.int64)
    hg = np.ones(n, bool) if has_grad is None else np.asarray(has_grad, bool)
    gn = float(np.sqrt(np.nansum(g**2)))
    return StepStats(
        step=step,
        time=1000.0 + step,
        loss=loss,
        lrs=(0.1,),
        grad_norm=g,
        has_grad=hg,
        nonfinite=nf,
        global_norm=gn,
        clipped_norm=gn,
        clip_factor=1.0,
        clip_mode="off",
        clip_threshold=1.0,
        steps_per_sec=10.0,
        mean_abs=None if mean_abs is None else np.asarray(mean_abs, np.float64),
    )


def store_of(events: Sequence[Event]) -> RunStore:
    """A store with the events applied."""
    store = RunStore()
    for ev in events:
        store.apply(ev)
    return store


def synthetic_source(
    scenario: str = "healthy",
    layers: int = 8,
    *,
    prefill: int = 60,
    steps_per_poll: int = 1,
    **kwargs: object,
) -> ScriptedSource:
    """A source with `prefill` steps of a synthetic run, which then makes steps and answers commands."""
    run = SyntheticRun(scenario, layers, **kwargs)  # type: ignore[arg-type]
    return ScriptedSource(run.events(prefill), run=run, steps_per_poll=steps_per_poll, name=f"synthetic: {scenario}")


def manual_app(source: ScriptedSource, **kwargs: object) -> GradTUIApp:
    """An app whose timer never fires: the test polls."""
    return make_app(source, refresh_hz=MANUAL, **kwargs)  # type: ignore[arg-type]


def text_of(widget: object, width: int = 120) -> str:
    """Plain text of a Static's content (a string, a Text or any Rich renderable)."""
    from rich.console import Console
    from rich.text import Text
    from textual.widgets import Static

    assert isinstance(widget, Static)
    content = widget.content
    if isinstance(content, str):
        return content
    if isinstance(content, Text):
        return content.plain
    console = Console(width=width, color_system=None, force_terminal=False)
    with console.capture() as cap:
        console.print(content)
    return cap.get()
