"""Viewer costs: events ingested per second, frame time, and CPU share while a demo trains.

    .venv/bin/python benchmarks/viewer.py              # everything (about a minute)
    .venv/bin/python benchmarks/viewer.py --only frame --layers 50 500 2000
    .venv/bin/python benchmarks/viewer.py --only cpu --scenario relu-explode --seconds 20

- ingest: StepStats of a 100-layer run (a detail step and an UpdateStats every 50 steps)
  folded by the app's own `poll_source()`, 2,000 events per poll (a 10 Hz tick at 20k
  steps/s). Target: 20k steps/s.
- frame: the app runs headless at 200x60 on its 10 Hz timer while a synthetic run's
  events (made beforehand: making them is the training side's work) arrive 10 steps
  per poll (healthy: noisy but unflagged; exploding: a stress case where every
  visible row changes and about 10 alerts arrive per frame); a frame is one poll plus
  the layout, compositor and ANSI encoding that follow it (Textual skips the encoding
  headless, so it is done here), counted in
  CPU time of the app's thread so that other processes on a shared box do not inflate
  it. Also the heatmap renderable alone (visible rows only). Target: under 20 ms.
- cpu: the viewer runs in a pseudo-terminal (200x60) on a real demo training process
  (`python -m gradtui.demo.worker SCENARIO`) started through `RunSource`; its own CPU
  time (not the child's) over the wall time. Target: under 15% of a core at 10 Hz.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import pty
import select
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gradtui.model.events import Event, StepStats
from gradtui.model.store import RunStore
from gradtui.sources.synthetic import ScriptedSource, SyntheticRun
from gradtui.ui.app import GradTUIApp, make_app
from gradtui.ui.renderables.heatmap import Heatmap, HeatmapLayout, heatmap_view, render_heatmap_text

MANUAL_HZ = 0.001


# ---------------------------------------------------------------- ingest


async def _ingest(n_layers: int, steps: int, per_poll: int) -> tuple[float, float]:
    events = SyntheticRun("healthy", n_layers, detail_every=50).events(steps)
    n_steps = sum(1 for e in events if type(e).__name__ == "StepStats")
    store = RunStore()
    t0 = time.perf_counter()
    for ev in events:
        store.apply(ev)
    store_rate = n_steps / (time.perf_counter() - t0)

    source = ScriptedSource([])
    app = make_app(source, refresh_hz=MANUAL_HZ)
    app.max_events_per_tick = per_poll
    async with app.run_test(size=(200, 60)) as pilot:
        await pilot.pause()
        source.feed(events)
        t0 = time.perf_counter()
        while app.poll_source():
            pass
        app_rate = n_steps / (time.perf_counter() - t0)
    return store_rate, app_rate


def bench_ingest(n_layers: int = 100, steps: int = 20_000) -> dict[str, float]:
    store_rate, app_rate = asyncio.run(_ingest(n_layers, steps, per_poll=2_000))
    return {"store_steps_per_s": store_rate, "app_steps_per_s": app_rate}


# ---------------------------------------------------------------- frame


class _Timeline:
    """Durations of the app's poll and of the screen work that follows, per tick."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.polls: list[float] = []
        self._current = 0.0
        self.active = False

    def poll(self, dt: float) -> None:
        if not self.active:
            return
        if self._current:
            self.ticks.append(self._current)
        self.polls.append(dt)
        self._current = dt

    def add(self, dt: float) -> None:
        if self.active and self._current:
            self._current += dt


def _instrument(timeline: _Timeline) -> Callable[[], None]:
    """Time poll_source, layout, compositor refresh and ANSI encoding; returns an undo."""
    from textual.app import App
    from textual.screen import Screen

    saved: list[tuple[type, str, Any]] = []

    def wrap(cls: type, name: str, record: Callable[[float], None]) -> None:
        original = getattr(cls, name)
        saved.append((cls, name, original))

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return original(self, *args, **kwargs)
            finally:
                record(time.thread_time() - t0)

        setattr(cls, name, timed)

    wrap(GradTUIApp, "poll_source", timeline.poll)
    wrap(Screen, "_refresh_layout", timeline.add)
    wrap(Screen, "_compositor_refresh", timeline.add)

    original_display = App._display
    saved.append((App, "_display", original_display))

    def display(self: Any, screen: Any, renderable: Any) -> None:
        # Headless apps skip this: encode the update as a terminal would receive it.
        from textual._compositor import CompositorUpdate

        if isinstance(renderable, CompositorUpdate):
            t0 = time.thread_time()
            renderable.render_segments(self.console)
            timeline.add(time.thread_time() - t0)
        original_display(self, screen, renderable)

    App._display = display  # type: ignore[method-assign]

    def undo() -> None:
        for cls, name, original in saved:
            setattr(cls, name, original)

    return undo


class _Feed(ScriptedSource):
    """Events made beforehand, 10 steps (and their alerts) per poll: making them (the
    synthetic training and its detectors) is the training process's work, not the viewer's."""

    def __init__(self, prefill: list[Event], live: list[Event], steps_per_poll: int = 10) -> None:
        super().__init__(prefill)
        self._chunks: list[list[Event]] = [[]]
        for ev in live:
            self._chunks[-1].append(ev)
            if isinstance(ev, StepStats) and sum(isinstance(e, StepStats) for e in self._chunks[-1]) == steps_per_poll:
                self._chunks.append([])
        self._next = 0

    def poll(self, max_events: int = 100_000) -> list[Event]:
        if self._next < len(self._chunks):
            self.feed(self._chunks[self._next])
            self._next += 1
        return super().poll(max_events)


async def _frame(n_layers: int, seconds: float, scenario: str = "healthy") -> dict[str, float]:
    run = SyntheticRun(scenario, n_layers, detail_every=50)
    prefill = run.events(2_000)
    source = _Feed(prefill, run.events(int(seconds * 10 + 20) * 10))
    app = make_app(source, refresh_hz=10.0)
    timeline = _Timeline()
    undo = _instrument(timeline)
    try:
        async with app.run_test(size=(200, 60)) as pilot:
            await pilot.pause(0.5)
            timeline.active = True
            await asyncio.sleep(seconds)
            timeline.active = False
    finally:
        undo()
    ticks = np.array(timeline.ticks) * 1000
    return {
        "frames": float(ticks.size),
        "mean_ms": float(ticks.mean()),
        "p95_ms": float(np.percentile(ticks, 95)),
        "max_ms": float(ticks.max()),
        "poll_ms": float(np.mean(timeline.polls) * 1000),
    }


def bench_renderable(n_layers: int, width: int = 130, rows: int = 56, repeat: int = 20) -> float:
    """Milliseconds to build and encode the visible heatmap rows (pure Rich, no Textual)."""
    run = SyntheticRun("exploding", n_layers, detail_every=50)
    store = RunStore()
    for ev in run.events(2_000):
        store.apply(ev)
    times = []
    for i in range(repeat):
        for ev in run.step():
            store.apply(ev)
        t0 = time.perf_counter()
        layers = np.arange(i % max(1, n_layers - rows), min(n_layers, i % max(1, n_layers - rows) + rows))
        names = [store.layers[j].name for j in layers]
        layout = HeatmapLayout.fit(width, names)
        view = heatmap_view(store, "grad_norm", layout.cells, layers)
        render_heatmap_text(Heatmap(view, layout=layout), width, color_system="truecolor")
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


# ---------------------------------------------------------------- cpu


def viewer_child(scenario: str, speed: float) -> int:
    """The viewer on a real demo worker (run by `bench_cpu` inside a pseudo-terminal)."""
    from gradtui.sources.child import RunSource

    argv = [sys.executable, "-m", "gradtui.demo.worker", scenario, "--speed", str(speed), "--steps", "100000"]
    source = RunSource(argv, name=f"demo: {scenario}", serve=False)
    try:
        make_app(source, title=f"bench: {scenario}").run()
    finally:
        source.close()
    return 0


def bench_cpu(scenario: str, speed: float, seconds: float, warmup: float = 4.0) -> dict[str, float]:
    import psutil

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 200, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", COLORTERM="truecolor")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--viewer-child", scenario, "--speed", str(speed)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    received = [0]
    stop = threading.Event()

    def drain() -> None:
        # A terminal that never reads would block the viewer's writes.
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    received[0] += len(os.read(master, 65536))
                except OSError:
                    return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        viewer = psutil.Process(proc.pid)
        time.sleep(warmup)
        if proc.poll() is not None:
            raise RuntimeError(f"the viewer exited early with {proc.returncode}")
        workers = [p for p in viewer.children(recursive=True)]
        c0 = viewer.cpu_times()
        w0 = sum(w.cpu_times().user + w.cpu_times().system for w in workers)
        b0 = received[0]
        t0 = time.monotonic()
        time.sleep(seconds)
        c1 = viewer.cpu_times()
        w1 = sum(w.cpu_times().user + w.cpu_times().system for w in workers)
        wall = time.monotonic() - t0
        return {
            "viewer_cpu_pct": 100 * ((c1.user + c1.system) - (c0.user + c0.system)) / wall,
            "trainer_cpu_pct": 100 * (w1 - w0) / wall,
            "terminal_kb_per_s": (received[0] - b0) / wall / 1024,
        }
    finally:
        os.write(master, b"q")
        time.sleep(0.5)
        os.write(master, b"y")
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        stop.set()
        os.close(master)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("ingest", "frame", "cpu"), action="append")
    parser.add_argument("--layers", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time of the frame and cpu benchmarks")
    parser.add_argument("--scenario", default="relu-explode", help="demo scenario trained for the cpu benchmark")
    parser.add_argument("--speed", type=float, default=0.0, help="demo steps per second (0: as fast as it goes)")
    parser.add_argument("--viewer-child", metavar="SCENARIO", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.viewer_child:
        return viewer_child(args.viewer_child, args.speed)
    only = set(args.only or ("ingest", "frame", "cpu"))

    rows: list[tuple[str, str, str]] = []
    if "ingest" in only:
        r = bench_ingest()
        rows.append(("ingest, 100 layers: store alone", f"{r['store_steps_per_s']:,.0f} steps/s", ""))
        ok = "ok" if r["app_steps_per_s"] >= 20_000 else "MISSED"
        rows.append(("ingest, 100 layers: app poll_source", f"{r['app_steps_per_s']:,.0f} steps/s", f">= 20,000 {ok}"))
    if "frame" in only:
        for n, scenario in [(n, s) for n in args.layers for s in ("healthy", "exploding")]:
            f = asyncio.run(_frame(n, args.seconds, scenario))
            ok = "ok" if f["p95_ms"] < 20 else "MISSED"
            rows.append(
                (
                    f"frame 200x60, {n} layers, {scenario} ({f['frames']:.0f} frames)",
                    f"mean {f['mean_ms']:.1f} ms, p95 {f['p95_ms']:.1f}, max {f['max_ms']:.1f} "
                    f"(poll {f['poll_ms']:.1f})",
                    f"p95 < 20 ms {ok}",
                )
            )
            if scenario == "healthy":
                rows.append((f"heatmap renderable, {n} layers, 56 rows x 130", f"{bench_renderable(n):.2f} ms", ""))
    if "cpu" in only:
        c = bench_cpu(args.scenario, args.speed, args.seconds)
        ok = "ok" if c["viewer_cpu_pct"] < 15 else "MISSED"
        speed = "max speed" if args.speed == 0 else f"{args.speed:g} steps/s"
        rows.append(
            (
                f"viewer CPU, demo {args.scenario} ({speed}), 200x60, 10 Hz",
                f"{c['viewer_cpu_pct']:.1f}% of a core (trainer {c['trainer_cpu_pct']:.0f}%, "
                f"{c['terminal_kb_per_s']:.0f} KiB/s to the terminal)",
                f"< 15% {ok}",
            )
        )
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value}  {target}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
