"""The intervention keys of the viewer: what each sends, and what the screen says about it.

`GradTUIApp` owns one `Interventions`. Its key bindings run the app's
`intervene(NAME, ...)` action, which calls `Interventions.run`: `c` is
`intervene('toggle_clip')`, `+` is `intervene('scale_lr', 2.0)`. A command goes out
through the viewer's source, stays pending until the probe acknowledges it (state in
`gradtui.ui.controls`), and lands in the alert log at the step it took effect. A key
that cannot send says why in one toast, said once while it shows: after a run has
ended every key would otherwise stack its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from textual.app import App

from gradtui.model.commands import Capture, Command, Release
from gradtui.model.events import CommandResult
from gradtui.sources.base import Source
from gradtui.ui.controls import Controls, Pending, clip_preview, describe
from gradtui.ui.messages import InterventionAcknowledged, InterventionRefused, InterventionSent
from gradtui.ui.screens.dialogs import LRDialog
from gradtui.ui.widgets.alert_log import AlertLog

REFUSAL_TIMEOUT = 6.0
"""Seconds a refusal's toast shows; the same refusal is not said again meanwhile."""


class Viewer(Protocol):
    """What the interventions use of the viewer (`GradTUIApp`): its run and its log."""

    @property
    def source(self) -> Source: ...

    @property
    def controls(self) -> Controls: ...

    @property
    def alert_log(self) -> AlertLog: ...

    def refresh_views(self, force: bool = False, paced: bool = False) -> None: ...


class Interventions:
    """The intervention keys' actions, and sending, refusing and acknowledging commands.

    Args:
        app: The app that shows toasts and dialogs and receives the messages.
        viewer: The same app, for its source, controls and log.
    """

    def __init__(self, app: App[Any], viewer: Viewer) -> None:
        self.app = app
        self.viewer = viewer
        self._said: tuple[str, float] | None = None
        self._actions: dict[str, Callable[..., None]] = {
            "toggle_clip": self.toggle_clip,
            "cycle_clip_mode": self.cycle_clip_mode,
            "scale_threshold": self.scale_threshold,
            "scale_lr": self.scale_lr,
            "set_lr": self.set_lr,
            "toggle_pause": self.toggle_pause,
            "release": self.release,
            "capture": self.capture,
        }

    @property
    def controls(self) -> Controls:
        return self.viewer.controls

    def run(self, name: str, *args: float) -> None:
        """The key's action `name` (one of the bindings' `intervene(...)` names)."""
        self._actions[name](*args)

    # ------------------------------------------------------------ the keys

    def toggle_clip(self) -> None:
        cmd = self.controls.toggle_clip()
        # The preview only where the clip went out: a refused one already says why.
        if self.send(cmd) is None and cmd.mode != "off":
            controls = self.controls
            if preview := clip_preview(controls.store, controls.thresholds, cmd.threshold or 1.0):
                self.app.notify(preview, title="What each clip rule would have clipped", timeout=10)

    def cycle_clip_mode(self) -> None:
        cmd = self.controls.cycle_clip_mode()
        if cmd is None:
            self.app.notify(f"Clipping is off; c turns it on in {self.controls.last_clip_mode} mode.", timeout=4)
            self.viewer.refresh_views(force=True)
            return
        self.send(cmd)

    def scale_threshold(self, factor: float) -> None:
        self.send(self.controls.scale_threshold(factor))

    def scale_lr(self, factor: float) -> None:
        self.send(self.controls.scale_lr(factor))

    def set_lr(self) -> None:
        controls = self.controls
        lrs = controls.intended().lrs
        closed = controls.closed()
        if closed is not None:
            self.refuse(closed)
            return
        reason = controls.check(controls.set_lr(1.0))
        if reason is not None:
            self.refuse(f"Cannot set the learning rate: {reason}")
            return

        def done(value: float | None) -> None:
            if value is not None:
                self.send(self.controls.set_lr(value))

        self.app.push_screen(LRDialog(lrs[0] if lrs else None, len(lrs)), callback=done)

    def toggle_pause(self) -> None:
        self.send(self.controls.toggle_pause())

    def release(self) -> None:
        self.send(Release("all"))

    def capture(self) -> None:
        """Ask the run for a deep capture (its probe answers; one that takes none refuses, saying so)."""
        self.send(Capture())  # the command's own length (`Capture.steps`)

    # ------------------------------------------------------------ commands

    def send(self, cmd: Command, *, quiet: bool = False) -> str | None:
        """Send a command unless it cannot go now; returns why it was not sent, or None.

        `quiet`: the viewer's own command, not a key's (the tour holds a chapter while its
        story is open): on the record like any, but neither said nor logged.
        """
        controls = self.controls
        closed = controls.closed()
        invalid = None if closed is not None else controls.check(cmd)
        reason = closed or invalid or self.viewer.source.send(cmd)
        if reason is not None:
            if not quiet:
                # A run that is over or not there refuses every key alike: one message for all of them.
                self.refuse(f"{describe(cmd)} not sent: {reason}" if invalid else f"Nothing sent: {reason}.")
            self.app.post_message(InterventionRefused(cmd, reason))
            return reason
        pending = controls.sent(cmd, quiet=quiet)
        if not quiet:
            self.viewer.alert_log.add_sent(pending)
        self.app.post_message(InterventionSent(cmd, pending.description))
        self.viewer.refresh_views()
        return None

    def refuse(self, message: str) -> None:
        """Say why a key did nothing: one toast (a refusal reached no run, so it is not on its
        log), not said again while the same one shows."""
        now = time.monotonic()
        if self._said is not None and self._said[0] == message and now - self._said[1] < REFUSAL_TIMEOUT:
            return
        self._said = (message, now)
        self.app.notify(message, severity="error", timeout=REFUSAL_TIMEOUT)

    def forget(self) -> None:
        """A new run starts: what was said about the last one may be said again."""
        self._said = None

    def acknowledged(self, result: CommandResult) -> bool:
        """Fold in the probe's answer to anyone's command; False when it answers one of this
        viewer's quiet commands (kept off the log and the header)."""
        pending = self.controls.acknowledge(result)
        quiet = pending is not None and pending.quiet
        if not quiet:
            # A refusal by the run is on its record: the log line (and the header) say it once.
            self.viewer.alert_log.add_result(result, pending)
        self.app.post_message(InterventionAcknowledged(result))
        return not quiet

    def abandoned(self) -> list[Pending]:
        """The run ended: the pending commands it will never answer (each logged, quiet ones aside)."""
        gone = self.controls.abandon()
        for p in gone:
            if not p.quiet:
                self.viewer.alert_log.add_note(f"✗ {p.description} not applied: the run ended", "yellow")
        return gone
