"""App-wide messages of the viewer (a widget's own messages live in its class)."""

from __future__ import annotations

from textual.message import Message

from gradtui.model.commands import Command
from gradtui.model.events import CommandResult, RunEnd


class InterventionSent(Message):
    """A command left for the probe; it is pending until acknowledged."""

    def __init__(self, command: Command, description: str) -> None:
        self.command = command
        self.description = description
        super().__init__()


class InterventionRefused(Message):
    """A command the viewer did not send (invalid, or the source could not take it)."""

    def __init__(self, command: Command, reason: str) -> None:
        self.command = command
        self.reason = reason
        super().__init__()


class InterventionAcknowledged(Message):
    """The probe answered a command: applied at `result.step`, or refused."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        super().__init__()


class RunEnded(Message):
    """The run's last event arrived (status ok, error or interrupted)."""

    def __init__(self, end: RunEnd) -> None:
        self.end = end
        super().__init__()


class ChapterStarted(Message):
    """The tour moved to a chapter: its training was started and the store emptied."""

    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.name = name
        super().__init__()
