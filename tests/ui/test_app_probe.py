"""Every intervention key against the real probe: a tiny model trains in a worker thread.

The app reads the probe's in-process queue (`mon.source()`); each test checks the right
command is sent, the probe applies it, and the acknowledgement shows on screen. The
worker steps only when the test lets it (`Ctx.until`): Textual's pilot waits for the
process to go idle after each key, which a free-running trainer in the same process
never lets happen.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gradtui.probe.monitor")

from textual.message import Message  # noqa: E402
from textual.pilot import Pilot  # noqa: E402
from ui_helpers import MANUAL  # noqa: E402

import gradtui  # noqa: E402
from gradtui.model.commands import Command, SetClip, SetLR, SetPaused  # noqa: E402
from gradtui.ui.app import GradTUIApp, make_app  # noqa: E402
from gradtui.ui.messages import InterventionAcknowledged, InterventionSent  # noqa: E402
from gradtui.ui.screens.dialogs import LRDialog  # noqa: E402
from gradtui.ui.widgets.alert_log import AlertLog  # noqa: E402
from gradtui.ui.widgets.status import StatusHeader  # noqa: E402


class TinyTrainer:
    """A 2-layer MLP trained on a fixed batch in a thread, watched by the probe."""

    def __init__(self) -> None:
        # One intra-op thread: spinning OpenMP workers would starve the app's event loop on 2 cores.
        torch.set_num_threads(1)
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.mon = gradtui.watch(self.model, self.opt, queue=True, detail_every=5, run="tiny")
        self.x = torch.randn(32, 4)
        self.y = torch.randn(32, 1)
        self.stop = threading.Event()
        self.budget = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._loop, name="tiny-trainer", daemon=True)

    def advance(self, steps: int = 1) -> None:
        """Let the worker make `steps` more training steps."""
        self.budget.release(steps)

    def _loop(self) -> None:
        try:
            while not self.stop.is_set():
                if not self.budget.acquire(timeout=0.05):
                    continue
                loss = torch.nn.functional.mse_loss(self.model(self.x), self.y)
                self.opt.zero_grad()
                loss.backward()
                self.mon.step(loss)
                self.opt.step()
        finally:
            self.mon.close()

    def __enter__(self) -> TinyTrainer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.mon.send(SetPaused(False))  # a paused probe waits in step(): let it return
        self.thread.join(timeout=10)
        assert not self.thread.is_alive()


@dataclass
class Ctx:
    app: GradTUIApp
    pilot: Pilot[None]
    messages: list[Message]
    trainer: TinyTrainer

    async def until(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        """Let the worker step and poll its queue until `cond` holds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.trainer.advance(1)
            await asyncio.sleep(0.01)
            self.app.poll_source()
            await self.pilot.pause()
            if cond():
                return
        raise AssertionError("timed out waiting for the probe")

    @property
    def status(self) -> str:
        return self.app.query_one(StatusHeader).plain

    @property
    def acks(self) -> list[InterventionAcknowledged]:
        return [m for m in self.messages if isinstance(m, InterventionAcknowledged)]

    @property
    def sent(self) -> list[Command]:
        return [m.command for m in self.messages if isinstance(m, InterventionSent)]

    def last_step(self) -> int:
        return self.app.store.last.step if self.app.store.last is not None else -1


def drive(body: Callable[[Ctx], Awaitable[None]]) -> None:
    messages: list[Message] = []

    async def main() -> None:
        with TinyTrainer() as trainer:
            app = make_app(trainer.mon.source(), refresh_hz=MANUAL)
            async with app.run_test(size=(120, 36), message_hook=messages.append) as pilot:
                ctx = Ctx(app, pilot, messages, trainer)
                await ctx.until(lambda: ctx.last_step() >= 2)
                await body(ctx)

    asyncio.run(main())


def same_command(a: Command, b: Command) -> bool:
    """Equal but for the random id."""
    return type(a) is type(b) and all(
        getattr(a, f.name) == getattr(b, f.name) for f in fields(a) if f.name != "id"
    )


@pytest.mark.parametrize(
    ("keys", "expect", "shows"),
    [
        ("c", SetClip("norm", 1.0), "clip norm ≤1"),
        ("]", SetClip("off", 2.0), "clip off (≤2)"),
        ("[", SetClip("off", 0.5), "clip off (≤0.5)"),
        ("+", SetLR(factor=2.0), "lr 0.2 "),
        ("-", SetLR(factor=0.5), "lr 0.05 "),
    ],
    ids=["c", "]", "[", "+", "-"],
)
def test_key_is_applied_by_the_probe(keys: str, expect: Command, shows: str) -> None:
    async def body(ctx: Ctx) -> None:
        await ctx.pilot.press(keys)
        (cmd,) = ctx.sent
        assert same_command(cmd, expect), cmd
        assert "pending" in ctx.status
        await ctx.until(lambda: bool(ctx.acks))
        (ack,) = ctx.acks
        assert ack.result.ok and ack.result.command_id == cmd.id
        # The probe's step report carries the new setting.
        await ctx.until(lambda: ctx.last_step() > ack.result.step)
        text = ctx.status
        assert shows in text and "pending" not in text, text
        assert f"applied @ step {ack.result.step}" in text
        assert any("applied" in line for line in ctx.app.query_one(AlertLog).plain_lines)
        assert any(m.step == ack.result.step for m in ctx.app.store.markers)

    drive(body)


def test_m_cycles_clip_mode_on_the_probe() -> None:
    async def body(ctx: Ctx) -> None:
        await ctx.pilot.press("c")
        await ctx.until(lambda: len(ctx.acks) == 1)
        await ctx.pilot.press("m")
        assert same_command(ctx.sent[-1], SetClip("value", 1.0))
        await ctx.until(lambda: ctx.app.store.last is not None and ctx.app.store.last.clip_mode == "value")
        assert "clip value ≤1" in ctx.status

    drive(body)


def test_l_sets_an_exact_lr_on_the_probe() -> None:
    async def body(ctx: Ctx) -> None:
        await ctx.pilot.press("l")
        assert isinstance(ctx.app.screen, LRDialog)
        await ctx.pilot.press(*"0.025", "enter")
        assert same_command(ctx.sent[-1], SetLR(value=0.025))
        await ctx.until(lambda: ctx.app.store.last is not None and ctx.app.store.last.lrs == (0.025,))
        assert "lr 0.025" in ctx.status

    drive(body)


def test_p_pauses_and_resumes_the_probe() -> None:
    async def body(ctx: Ctx) -> None:
        await ctx.pilot.press("p")
        assert same_command(ctx.sent[-1], SetPaused(True))
        await ctx.until(lambda: len(ctx.acks) == 1)
        assert "⏸ paused" in ctx.status
        paused_at = ctx.last_step()
        ctx.trainer.advance(5)
        await asyncio.sleep(0.3)
        ctx.app.poll_source()
        assert ctx.last_step() == paused_at, "a paused probe makes no steps"
        await ctx.pilot.press("p")
        assert "resuming" in ctx.status
        await ctx.until(lambda: len(ctx.acks) == 2)
        await ctx.until(lambda: ctx.last_step() > paused_at + 2)
        assert "▶ running" in ctx.status

    drive(body)
