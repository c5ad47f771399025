"""The viewer's key bindings, by what they drive: the tour, the training process, a
replay, the view. `GradTUIApp.BINDINGS` is all four tables; its help screen shows them
by section, and `check_action` enables each group only where it applies.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.keys import _character_to_key

from gradtui.model.commands import Capture
from gradtui.ui.screens.tour import NEXT_KEY, PREVIOUS_KEY, STORY_KEY

_THRESHOLD = Binding.Group("thr", compact=True)
_LR = Binding.Group("lr", compact=True)
_SPEED = Binding.Group("speed", compact=True)
_STEP = Binding.Group("step", compact=True)
# `.` and `,` are `>` and `<` without shift (the replay's forward/back), free in every mode,
# and the same key on the main screen, the detail screen and the story dialog. Only `.`
# goes in the footer: with it the footer still fits 80 columns, and the tour's banner or
# side panel always shows all three keys.
TOUR_BINDINGS: list[Binding] = [
    Binding(
        "full_stop",
        "tour_move(1)",
        "next",
        key_display=NEXT_KEY,
        tooltip="Tour: next chapter (stops this run, starts the next)",
        id="tour-next",
    ),
    Binding(
        "comma",
        "tour_move(-1)",
        "back",
        key_display=PREVIOUS_KEY,
        tooltip="Tour: previous chapter (starts its training again)",
        show=False,
        id="tour-back",
    ),
    Binding(
        "t",
        "tour_story",
        "story",
        key_display=STORY_KEY,
        tooltip="Tour: the chapter's story in full",
        show=False,
        id="tour-story",
    ),
    Binding(
        "r",
        "tour_restart",
        "restart",
        tooltip="Tour: run this chapter again from its first step",
        show=False,
        id="tour-restart",
    ),
]

INTERVENE = "intervene"
"""The action of every intervention key: `intervene(NAME, ...)` runs `Interventions.NAME(...)`
(`gradtui.ui.interventions`)."""
INTERVENTION_BINDINGS: list[Binding] = [
    Binding("c", "intervene('toggle_clip')", "clip", tooltip="Toggle gradient clipping on/off", id="toggle-clip"),
    Binding(
        "m",
        "intervene('cycle_clip_mode')",
        "mode",
        tooltip="Cycle the clip mode: norm / value / auto",
        id="clip-mode",
    ),
    Binding(
        "]",
        "intervene('scale_threshold', 2.0)",
        "thr×2",
        tooltip="Clip threshold ×2",
        group=_THRESHOLD,
        id="clip-up",
    ),
    Binding(
        "[",
        "intervene('scale_threshold', 0.5)",
        "thr÷2",
        tooltip="Clip threshold ÷2",
        group=_THRESHOLD,
        id="clip-down",
    ),
    Binding("+", "intervene('scale_lr', 2.0)", "lr×2", tooltip="Learning rate ×2", group=_LR, id="lr-up"),
    Binding("-", "intervene('scale_lr', 0.5)", "lr÷2", tooltip="Learning rate ÷2", group=_LR, id="lr-down"),
    Binding("l", "intervene('set_lr')", "lr=", tooltip="Type an exact learning rate", id="lr-set"),
    Binding("p", "intervene('toggle_pause')", "pause", tooltip="Pause / resume training", id="pause"),
    Binding(
        "d",
        "intervene('capture')",
        "capture",
        tooltip=f"Deep capture, {Capture().steps} steps: activations, moments, first NaN/Inf",
        show=False,
        id="capture",
    ),
    Binding(
        "L",
        "intervene('release')",
        "release",
        tooltip="Release: LR and clipping back to the loop",
        show=False,
        id="release",
    ),
]
REPLAY_BINDINGS: list[Binding] = [
    Binding("p,space", "replay_play", "play", tooltip="Play / pause the replay", id="replay-play"),
    Binding("+", "replay_speed(2.0)", "speed×2", tooltip="Replay speed ×2", group=_SPEED, id="replay-faster"),
    Binding("-", "replay_speed(0.5)", "speed÷2", tooltip="Replay speed ÷2", group=_SPEED, id="replay-slower"),
    Binding("<", "replay_step(-100)", "back", tooltip="Replay: back 100 steps", group=_STEP, id="replay-back"),
    Binding(">", "replay_step(100)", "fwd", tooltip="Replay: forward 100 steps", group=_STEP, id="replay-forward"),
]
VIEW_BINDINGS: list[Binding] = [
    Binding(
        "s",
        "cycle_stat",
        "stat",
        tooltip="Cycle the view: health, ‖g‖, mean|g|, max|g|, ‖Δw‖/‖w‖, and after a capture rms(a), max|a|, ‖m‖, ‖v‖",
        id="stat",
    ),
    Binding("o", "toggle_output", "output", tooltip="Log panel: training output / alerts", id="output"),
    Binding("question_mark", "help", "help", key_display="?", tooltip="This help", id="help"),
    Binding("q", "quit", "quit", tooltip="Quit (asks first when that stops a training process)", id="quit"),
    # ctrl+c quits as q does (Textual's default only says "press ctrl+q"); it asks the same questions.
    Binding("ctrl+c", "quit", "quit", show=False, priority=True, id="quit-ctrl-c"),
    Binding("T", "cycle_theme", "theme", tooltip="Cycle the theme: dark, light, high contrast", show=False, id="theme"),
]
PALETTE_BINDING = Binding(
    "ctrl+p", "command_palette", "palette", tooltip="Command palette: every action that works here, by name"
)
"""Textual's own key (listed in the help; the footer shows it where there is room: `KeysFooter`)."""
REPLAY_ACTIONS = frozenset({"replay_play", "replay_speed", "replay_step"})
TOUR_ACTIONS = frozenset({"tour_move", "tour_story", "tour_restart"})


def _keys(bindings: list[Binding]) -> dict[str, str]:
    """Key name (as in a key event) -> what the key does, for every key of `bindings`."""
    out: dict[str, str] = {}
    for b in bindings:
        for key in b.key.split(","):
            key = key.strip()
            out[_character_to_key(key) if len(key) == 1 else key] = b.description
    return out


KEY_ACTIONS: dict[str, dict[str, str]] = {
    "live": _keys(INTERVENTION_BINDINGS),
    "replay": _keys(REPLAY_BINDINGS),
}
"""The keys of each mode, so a key of the other mode can say why it does nothing here."""
