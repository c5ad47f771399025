"""The `Source` protocol: where a viewer gets events from and sends commands to, and
`ReplayControls`, what the `controls` of a source that replays a record offer.

Every source the viewer can be given implements all of it, explicitly (no `getattr`
with a default in the app): the child spawner (`gradtui.sources.child`), an attached
run (`gradtui.sources.attach`), a replayed record (`gradtui.sources.replay`), the
scripted run (`gradtui.sources.synthetic`), the in-process queue
(`gradtui.wire.queue.QueueSource`) and the tour's stand-ins (`gradtui.ui.tour`).

Detaching: only a source whose `can_detach` is True may be asked to `detach()`. The
others raise `RuntimeError` (`DetachError` for the sources in this package) with a
message that says why; they never pretend to have detached, because the caller then
closes the source, which for a source that owns a process stops that process.
"""

from __future__ import annotations

from typing import Protocol

from gradtui.model.commands import Command
from gradtui.model.events import Event


class DetachError(RuntimeError):
    """`detach()` on a source that cannot leave a training process running without the viewer."""


class ReplayControls(Protocol):
    """What a viewer can do with a replay (`gradtui.sources.replay` says how to drive one)."""

    @property
    def playing(self) -> bool: ...

    @property
    def speed(self) -> float: ...

    @property
    def position(self) -> int:
        """The step shown last, or the one a seek is about to show (-1 before the first)."""
        ...

    @property
    def first_step(self) -> int: ...

    @property
    def last_step(self) -> int:
        """The last step in the record so far (-1 when none yet)."""
        ...

    @property
    def generation(self) -> int:
        """Bumped by every seek: the viewer must start from an empty store."""
        ...

    @property
    def following(self) -> bool:
        """The record is still being written and followed."""
        ...

    @property
    def status(self) -> str: ...

    def toggle_play(self) -> bool: ...

    def set_speed(self, speed: float) -> float: ...

    def seek(self, step: int) -> int: ...

    def step_by(self, steps: int) -> int: ...


class Source(Protocol):
    """Where a viewer gets events from and sends commands to."""

    @property
    def name(self) -> str:
        """Shown in the header ("demo: sigmoid", "attach: 1234", a file name)."""
        ...

    @property
    def owns_process(self) -> bool:
        """True when closing this source stops a training process it started (ask first)."""
        ...

    @property
    def can_detach(self) -> bool:
        """True when `detach()` can leave that process running without the viewer."""
        ...

    @property
    def controls(self) -> ReplayControls | None:
        """The playback controls (play, speed, seek) of a source that replays a record, else None."""
        ...

    def poll(self, max_events: int = 100_000) -> list[Event]:
        """Events that arrived since the last poll; never blocks."""
        ...

    def send(self, command: Command) -> str | None:
        """Queue a command for the probe; returns why it could not be sent, or None."""
        ...

    def detach(self) -> str:
        """Stop reading but leave the training process running; returns what to tell the user
        (how to attach again, where its output goes).

        Raises:
            RuntimeError: `can_detach` is False (`DetachError` from this package's sources).
        """
        ...

    def close(self) -> None:
        """Stop reading (and stop a child process this source started)."""
        ...


class _Named(Protocol):
    @property
    def name(self) -> str: ...


def no_detach(self: _Named) -> str:
    """`detach` for a source that cannot detach (`can_detach = False`): raises `DetachError`.

    Assign it in the class body: `detach = no_detach` (a subclass that can detach overrides it).
    """
    raise DetachError(f"{self.name} started no training process: closing it is all it takes to leave")
