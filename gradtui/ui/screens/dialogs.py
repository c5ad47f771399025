"""Small modal dialogs: type a learning rate, confirm quitting, show a run's error."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from gradtui.core.commands import SetLR, parse_lr, validate


class LRDialog(ModalScreen[float | None]):
    """Ask for an exact learning rate; a bad value is refused here, with the reason."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", id="lr-cancel")]

    def __init__(self, current: float | None, n_groups: int) -> None:
        super().__init__()
        self.current = current
        self.n_groups = n_groups

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label("Set the learning rate (all param groups)", classes="dialog-title")
            now = f"now {self.current:.4g}" if self.current is not None else "no learning rate reported yet"
            yield Label(f"{now}; Enter to send, Esc to cancel", classes="dialog-hint")
            yield Input(placeholder="e.g. 3e-4", id="lr-input")
            yield Static("", id="lr-error", classes="dialog-error")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def check(self, text: str) -> tuple[float | None, str | None]:
        """The value typed, or why it is refused."""
        try:
            value = parse_lr(text)
        except ValueError as exc:
            return None, str(exc)
        reason = validate(SetLR(value=value), self.n_groups)
        return (None, reason) if reason else (value, None)

    def on_input_changed(self, event: Input.Changed) -> None:
        error = self.query_one("#lr-error", Static)
        if not event.value.strip():
            error.update("")
            return
        _, reason = self.check(event.value)
        error.update(Text(f"✗ {reason}", style="bold red") if reason else Text("✓ ok", style="green"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value, reason = self.check(event.value)
        if reason is not None:
            self.query_one("#lr-error", Static).update(Text(f"✗ refused: {reason}", style="bold red"))
            self.app.bell()
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmQuit(ModalScreen[bool]):
    """Confirm leaving when that stops the training process this viewer started."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", id="confirm-yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm-no"),
    ]

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.message, classes="dialog-title")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Stop and quit (y)", variant="error", id="yes")
                yield Button("Stay (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class RunErrorScreen(ModalScreen[None]):
    """The training process died: its error and traceback."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter", "close", "Close", id="error-close")]

    def __init__(self, step: int, error: str) -> None:
        super().__init__()
        self.step = step
        self.error = error or "(no traceback was sent)"

    def compose(self) -> ComposeResult:
        with Vertical(id="error-dialog", classes="dialog"):
            last = self.error.strip().splitlines()[-1] if self.error.strip() else ""
            yield Label(Text(f"✖ Training crashed at step {self.step}", style="bold"), classes="dialog-title")
            yield Label(Text(last, style="bold"), classes="dialog-hint")
            with VerticalScroll(id="traceback"):
                yield Static(Text(self.error), id="traceback-text")
            yield Label("Esc: close (the run's history stays on screen)  q: quit", classes="dialog-hint")

    def action_close(self) -> None:
        self.dismiss(None)
