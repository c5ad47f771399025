"""The footer: Textual's, compact, with the keys first where the terminal is narrow."""

from __future__ import annotations

from textual import events
from textual.widgets import Footer

PALETTE_HINT_WIDTH = 100
"""Narrower than this, the footer leaves out the command palette's hint (ctrl+p, which the help
lists): Textual docks it over the last keys (at 80 columns it covered `o output`)."""


class KeysFooter(Footer):
    """Textual's footer, leaving out the palette's hint where the keys need the room."""

    def on_resize(self, event: events.Resize) -> None:
        self.show_command_palette = event.size.width >= PALETTE_HINT_WIDTH
