"""Which steps get per-layer statistics: every `every`-th when the user fixed it, else as often
as the probe's overhead budget allows.

With the budget, the probe times what it spends on each step (`mon.step`, the optimizer
post-step hook, and on the publishing thread the CPU time it takes to turn a sampled step
into events) against the loop's own step time, and samples every `stride` steps, the
smallest power of two that keeps the estimated overhead within the budget (at most
`MAX_STRIDE`). The stride is only that of the per-layer statistics: every step's loss and
global norm reach the detectors whatever it is (`gradtui.probe.runwide`). Trouble brings it
back to every step at once, for `HOLD_STEPS` steps: a non-finite loss or global norm, or an
alarm of a blow-up (exploding, non-finite, loss spike: `BLOWUP_KINDS`) at any level, info
included. A vanishing or dead layer stays so for thousands of steps and is seen at any
stride. A step whose loss or global norm comes near what
the detectors would flag is sampled whole on the spot (`promote`). The detectors are the
judge of what is unusual (their rules are tuned to stay quiet on healthy runs); a heuristic
of the sampler's own would be a second rule for the same thing.

Why 1% by default: the per-layer norms and the detectors cost about 0.6-1 ms on a 2-core
CPU whatever the model, which is 1-15% of the small models people debug on a laptop and
well under 1% of any model worth a GPU; 1% keeps the monitor below the noise of a shared
machine and still samples a 6 ms step about 10 times a second.
"""

from __future__ import annotations

import decimal
import math
import statistics
import time
from collections import deque
from collections.abc import Callable

from gradtui.wire import env

OVERHEAD_BUDGET = 0.01
"""Default share of the loop's step time the probe may spend (when `every` is not given)."""
MAX_STRIDE = 32
"""At most this many steps between two sampled ones, however slow the probe is."""
HOLD_STEPS = 200
"""After trouble, every step is sampled for this many steps."""
CANARY_SHARE = 0.5
"""An unsampled step may pass over every gradient if that takes at most this share of the budget;
past it, it measures canary layers (`gradtui.probe.runwide.Canaries`)."""
WARMUP_SAMPLES = 8
"""Sampled steps timed before the stride may rise (the first ones pay for caches and allocation)."""
_WINDOW = 32


def parse_budget(value: object, what: str = "budget") -> float:
    """A budget from an argument or `GRADTUI_BUDGET`: a fraction in (0, 1), or 0 / "off" for none."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("off", "none", "0"):
            return 0.0
        digits = text.removesuffix("%")
        try:
            number = float(digits) / (100.0 if text.endswith("%") else 1.0)
            exact = decimal.Decimal(digits)
        except (ValueError, decimal.InvalidOperation):
            raise ValueError(
                f"{what} must be a fraction such as 0.01, a percentage such as 1%, or off; got {value!r}"
            ) from None
        if number == 0.0 and exact != 0:
            # 0 means every step, the opposite of a tiny budget: never let a value round into it.
            raise ValueError(
                f"{what} {value!r} is too small to be a share of the step time (it reads as 0, which turns the "
                "budget off and samples every step); give a budget such as 0.001, or off for every step"
            )
        return parse_budget(number, what)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a number in [0, 1) (0 for none), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1) (a share of the step time; 0 for none), got {value!r}")
    return float(value)


def default_budget() -> float:
    """`GRADTUI_BUDGET` when set (so a whole run or test suite can fix sampling), else `OVERHEAD_BUDGET`."""
    spec = env.get(env.BUDGET_ENV)
    return OVERHEAD_BUDGET if spec is None else parse_budget(spec, env.BUDGET_ENV)


class Sampler:
    """Decides, step by step, whether a step is sampled and whether it is a detail step.

    Args:
        every: A fixed stride (the budget is then off), or None to follow `budget`.
        budget: The share of the loop's step time the probe may spend (0: every step).
        detail_every: Every `detail_every`-th sampled step is a detail step.
        clock: The timer (tests give a fake one).
    """

    def __init__(
        self,
        every: int | None,
        budget: float,
        detail_every: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.budget = 0.0 if every is not None else budget
        self.stride = every if every is not None else 1
        """Steps from one sampled step to the next, as things stand."""
        self.detail_every = detail_every
        self.samples = 0
        """Sampled steps so far."""
        self._clock = clock
        self._next = 0
        self._hold_until = -1
        self._entered: float | None = None
        self._own = 0.0
        self._loop: deque[float] = deque(maxlen=_WINDOW)
        self._published: deque[float] = deque(maxlen=_WINDOW)
        self._published_run = 0.0
        """Publishing-thread CPU time per unsampled step (a running mean)."""
        self._sampled_cost: deque[float] = deque(maxlen=_WINDOW)
        self._plain_cost: deque[float] = deque(maxlen=_WINDOW)
        self._full_pass: deque[float] = deque(maxlen=_WINDOW)
        self._was_sampled = False
        self.canaries = False
        """Unsampled steps measure canary layers, not every gradient (the budget cannot pay for it)."""

    @property
    def adaptive(self) -> bool:
        return self.budget > 0.0

    def begin(self, step: int) -> tuple[bool, bool]:
        """At the start of `mon.step`: (sampled, detail) for `step`."""
        if not self.adaptive:
            sampled = step % self.stride == 0
            detail = sampled and (step // self.stride) % self.detail_every == 0
            if sampled:
                self.samples += 1
            return sampled, detail
        now = self._clock()
        if self._entered is not None:
            self._loop.append(now - self._entered - self._own)  # the loop's own time since the last step
            (self._sampled_cost if self._was_sampled else self._plain_cost).append(self._own)
        self._entered = now
        self._own = 0.0
        sampled = step >= self._next or step <= self._hold_until
        if sampled:
            detail = self.samples % self.detail_every == 0
            self.samples += 1
            self._next = step + self.stride
        else:
            detail = False
        self._was_sampled = sampled
        return sampled, detail

    def spent(self, seconds: float) -> None:
        """Time the probe spent on the current step (called from `mon.step` and the hooks)."""
        self._own += seconds

    def untimed(self) -> None:
        """Leave the current step out of the timing (it waited on a pause)."""
        self._entered = None
        self._own = 0.0

    def published(self, seconds: float) -> None:
        """CPU time the publishing thread took for one sampled step (it shares the cores with the loop)."""
        self._published.append(seconds)

    def promote(self, step: int) -> bool:
        """Sample the current step after all (its loss or global norm looks unusual; with the budget
        only: a fixed stride stays exact); returns whether it is a detail step."""
        detail = self.samples % self.detail_every == 0
        self.samples += 1
        self._was_sampled = True
        self._next = step + self.stride
        return detail

    def sample_next(self) -> None:
        """Sample the next step (a value read a step late looked unusual); with the budget only."""
        if self.adaptive:
            self._next = 0

    def full_pass(self, seconds: float) -> None:
        """Time an unsampled step took to measure every gradient (what `canaries` is chosen by)."""
        self._full_pass.append(seconds)

    def published_run(self, seconds: float, steps: int) -> None:
        """CPU time the publishing thread took for `steps` unsampled steps."""
        if steps > 0:
            self._published_run += 0.1 * (seconds / steps - self._published_run)

    def end(self, step: int) -> None:
        """At the end of `mon.step`: count its time, and choose the stride after a sampled step."""
        if not self.adaptive or self._entered is None:
            return
        self._own += self._clock() - self._entered
        if self._was_sampled and self.samples > WARMUP_SAMPLES and step > self._hold_until:
            self.stride = self._choose()
            if self._full_pass and self._loop:
                allowed = CANARY_SHARE * self.budget * statistics.median(self._loop)
                self.canaries = statistics.median(self._full_pass) > allowed

    def check(self, step: int, value: float) -> None:
        """A step's loss or global norm: trouble when not finite."""
        if not math.isfinite(value):
            self.trouble(step)

    def trouble(self, step: int) -> None:
        """Sample every step for the next `HOLD_STEPS` steps (with the budget: a fixed stride stays
        exact); thread-safe: plain attribute writes."""
        self._hold_until = max(self._hold_until, step + HOLD_STEPS)
        if self.adaptive:
            self.stride = 1

    def troubled(self, step: int) -> bool:
        """Whether `step` is within `HOLD_STEPS` of an alarm (`trouble`), at any stride."""
        return step <= self._hold_until

    def overhead(self, stride: int) -> float:
        """Estimated share of the loop's step time the probe takes at `stride` (NaN before data)."""
        costs = self._costs()
        return _share(costs, stride) if costs is not None else math.nan

    def _costs(self) -> tuple[float, float, float] | None:
        """(probe time of a sampled step, of another step, the loop's own step time): medians."""
        if not self._loop or not self._sampled_cost:
            return None
        sampled = statistics.median(self._sampled_cost)
        if self._published:
            sampled += statistics.median(self._published)
        plain = statistics.median(self._plain_cost) if self._plain_cost else 0.0
        return sampled, plain + self._published_run, statistics.median(self._loop)

    def _choose(self) -> int:
        costs = self._costs()  # once: this runs after every sampled step
        if costs is None:
            return self.stride
        stride = 1
        while stride < MAX_STRIDE:
            # A lower stride than now must fit with room to spare, so the stride does not flap.
            allowed = self.budget * (1.0 if stride >= self.stride else 0.7)
            if _share(costs, stride) <= allowed:
                break
            stride *= 2
        return stride


def _share(costs: tuple[float, float, float], stride: int) -> float:
    sampled, plain, loop = costs
    per_step = (sampled + (stride - 1) * plain) / stride
    return per_step / loop if loop > 0 else math.inf
