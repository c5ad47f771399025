"""Small modal dialogs: type a learning rate, confirm quitting, show a run's error."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from gradtui.model.commands import SetLR, parse_lr, validate


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


class ConfirmQuit(ModalScreen[str | None]):
    """Confirm leaving when that stops the training process this viewer started, or leaves
    a run paused by this viewer.

    Dismisses with "stop", "detach" (leave it running; only when the source can), "resume"
    (resume the run, then leave; only for a pause of ours) or None.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer('stop')", "Quit", id="confirm-yes"),
        Binding("d", "answer('detach')", "Quit, leave it running", id="confirm-detach"),
        Binding("r", "answer('resume')", "Resume and quit", id="confirm-resume"),
        Binding("n,escape", "answer(None)", "Stay", id="confirm-no"),
    ]

    def __init__(self, message: str, *, can_detach: bool = False, paused: bool = False) -> None:
        super().__init__()
        self.message = message
        self.can_detach = can_detach
        self.paused = paused
        """The question is about our pause: quitting leaves the run paused (for a while)."""

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="dialog"):
            yield Label(self.message, classes="dialog-title")
            with Horizontal(classes="dialog-buttons"):
                if self.paused:
                    yield Button("Resume it and quit (r)", variant="success", id="resume")
                    yield Button("Quit, leave it paused (y)", variant="warning", id="stop")
                else:
                    yield Button("Stop it and quit (y)", variant="error", id="stop")
                if self.can_detach:
                    yield Button("Quit, leave it running (d)", variant="warning", id="detach")
                yield Button("Stay (n)", variant="primary", id="stay")

    def on_mount(self) -> None:
        self.query_one("#stay", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id if event.button.id in ("stop", "detach", "resume") else None)

    def action_answer(self, answer: str | None) -> None:
        if (answer == "detach" and not self.can_detach) or (answer == "resume" and not self.paused):
            return
        self.dismiss(answer)


class RunErrorScreen(ModalScreen[None]):
    """The training process died: its error and traceback."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,enter", "close", "Close", id="error-close"),
        # In the demo's tour a crashed chapter need not stop the tour (the app refuses these otherwise).
        Binding("full_stop", "app.tour_move(1)", "next chapter", show=False, id="error-next-chapter"),
        Binding("comma", "app.tour_move(-1)", "previous chapter", show=False, id="error-previous-chapter"),
        Binding("r", "app.tour_restart", "run the chapter again", show=False, id="error-restart-chapter"),
    ]

    def __init__(
        self, step: int | None, error: str, output: list[str] | None = None, *, hint: str | None = None
    ) -> None:
        super().__init__()
        self.step = step
        self.error = error or "(no error text was sent)"
        self.output = output or []
        self.hint = hint or "Esc: close (the run's history stays on screen)  q: quit"

    def compose(self) -> ComposeResult:
        with Vertical(id="error-dialog", classes="dialog"):
            last = self.error.strip().splitlines()[-1] if self.error.strip() else ""
            said = [line for line in self.output if line.strip()]
            if said and "Traceback" not in self.error:
                # The process died without a traceback from the probe: what it said last is
                # the reason ("gradtui worker: CUDA was asked for ..."), more than its exit code.
                last = said[-1].strip()
            where = f" at step {self.step}" if self.step is not None else ""
            yield Label(Text(f"✖ Training crashed{where}", style="bold"), classes="dialog-title")
            yield Label(Text(last, style="bold"), classes="dialog-hint")
            text = Text(self.error.rstrip() + "\n")
            if self.output and "Traceback" not in self.error:
                # The probe could not send the traceback (the process died): its output has it.
                text.append("\nLast output of the training process:\n", style="bold")
                text.append("\n".join(self.output))
            with VerticalScroll(id="traceback"):
                yield Static(text, id="traceback-text")
            yield Label(self.hint, classes="dialog-hint")

    def action_close(self) -> None:
        self.dismiss(None)
