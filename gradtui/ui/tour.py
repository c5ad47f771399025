"""The guided tour as the viewer sees it: chapters, and a function that starts one.

Torch-free and training-free: `gradtui.demo` builds a `Tour` from the scenario catalog
with a `start` that spawns the training worker; tests pass a `start` that returns a
scripted source. The app owns the switching (close the old source, reset the store,
start the new one); this module only keeps the order and the current position.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gradtui.model.commands import Command
from gradtui.model.events import Event, RunEnd
from gradtui.sources.base import Source, no_detach

SUGGESTIBLE_KEYS: dict[str, str] = {
    "c": "clip",
    "m": "clip mode",
    "]": "thr×2",
    "[": "thr÷2",
    "+": "lr×2",
    "-": "lr÷2",
    "l": "lr=",
    "p": "pause",
    "s": "stat",
    "d": "capture",
}
"""Keys a narrative may ask the user to press, with the short label the footer uses."""

# "Press c to clip ..., or - to halve ...", "(press -)": the key follows "press" or ", or".
_PRESS = re.compile(r"(?:\b[Pp]ress|,\s+or)\s+(\S+?)(?=[\s,.;:)])")


def suggested_keys(narrative: str) -> tuple[str, ...]:
    """The viewer keys a narrative tells the user to press, in order of mention, once each.

    >>> suggested_keys("Press c to clip the norm, or - to halve the learning rate.")
    ('c', '-')
    """
    out: list[str] = []
    for match in _PRESS.finditer(narrative):
        key = match.group(1)
        if key in SUGGESTIBLE_KEYS and key not in out:
            out.append(key)
    return tuple(out)


@dataclass(frozen=True)
class Chapter:
    """One stop of the tour: a training setup and the story that goes with it."""

    name: str
    """Scenario name (what `gradtui demo NAME` runs)."""
    title: str
    """One line, shown as the chapter's heading."""
    narrative: str
    """Markdown: what you are looking at, what to watch, which key to press."""
    group: str = ""
    """The failure this chapter belongs to ("vanishing", "exploding", ...)."""
    keys: tuple[str, ...] = ()
    """Viewer keys the narrative suggests (see `suggested_keys`)."""


class Tour:
    """An ordered list of chapters, the current position, and how to start a chapter.

    Args:
        chapters: The chapters in tour order (at least one).
        start: Starts a chapter's training and returns its event source.
        index: The chapter to begin with.
    """

    def __init__(self, chapters: Sequence[Chapter], start: Callable[[Chapter], Source], *, index: int = 0) -> None:
        if not chapters:
            raise ValueError("a tour needs at least one chapter")
        if not 0 <= index < len(chapters):
            raise ValueError(f"chapter index {index} out of range 0..{len(chapters) - 1}")
        self.chapters: tuple[Chapter, ...] = tuple(chapters)
        self.index = index
        self._start = start

    def __len__(self) -> int:
        return len(self.chapters)

    @property
    def current(self) -> Chapter:
        """The chapter shown now."""
        return self.chapters[self.index]

    @property
    def next_chapter(self) -> Chapter | None:
        """The chapter after this one, or None at the end."""
        return self.chapters[self.index + 1] if self.index + 1 < len(self.chapters) else None

    @property
    def previous_chapter(self) -> Chapter | None:
        """The chapter before this one, or None at the start."""
        return self.chapters[self.index - 1] if self.index > 0 else None

    @property
    def position(self) -> str:
        """The position as "Chapter i/N" (1-based), or "" for a one-chapter tour (`gradtui demo NAME`)."""
        return f"Chapter {self.index + 1}/{len(self.chapters)}" if len(self.chapters) > 1 else ""

    def start(self) -> Source:
        """Start the current chapter's training; returns its source.

        A `start` that raises yields a `FailedSource` carrying the reason, so the viewer
        shows it like any crashed run instead of dying.
        """
        chapter = self.current
        try:
            return self._start(chapter)
        except Exception as exc:  # shown in the viewer's crash dialog, the tour goes on
            return FailedSource(f"demo: {chapter.name}", f"could not start {chapter.name}: {exc}")

    def move(self, delta: int) -> bool:
        """Move `delta` chapters; False (and no move) past either end."""
        target = self.index + delta
        if not 0 <= target < len(self.chapters):
            return False
        self.index = target
        return True


class FailedSource:
    """A source whose training process could not be started: one error `RunEnd`, then nothing."""

    owns_process = False
    can_detach = False
    controls = None
    detach = no_detach

    def __init__(self, name: str, error: str) -> None:
        self.name = name
        self.error = error
        self._sent = False

    def poll(self, max_events: int = 100_000) -> list[Event]:
        if self._sent:
            return []
        self._sent = True
        return [RunEnd(step=-1, status="error", error=self.error)]

    def send(self, command: Command) -> str | None:
        return "the training process is not running"

    def close(self) -> None:
        return None


class HeldSource:
    """Stands in for a chapter whose training has not started yet (its story is open)."""

    owns_process = False
    can_detach = False
    controls = None
    detach = no_detach

    def __init__(self, name: str) -> None:
        self.name = name

    def poll(self, max_events: int = 100_000) -> list[Event]:
        return []

    def send(self, command: Command) -> str | None:
        return "this chapter's run starts when you close its story (Esc)"

    def close(self) -> None:
        return None
