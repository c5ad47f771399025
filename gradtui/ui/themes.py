"""The viewer's themes: Textual's dark and light, and a high-contrast one of our own."""

from __future__ import annotations

from textual.theme import Theme

HIGH_CONTRAST = Theme(
    name="gradtui-high-contrast",
    primary="#ffff00",
    secondary="#00ffff",
    accent="#ffffff",
    warning="#ffff00",
    error="#ff3030",
    success="#00ff00",
    foreground="#ffffff",
    background="#000000",
    surface="#000000",
    panel="#1a1a1a",
    boost="#ffffff",
    dark=True,
    variables={
        "footer-key-foreground": "#ffff00",
        "footer-description-foreground": "#ffffff",
        "border": "#ffffff",
        "text-muted": "#e0e0e0",
    },
)
"""White on black, yellow keys and focus: for glare, projectors and low vision."""

THEMES: dict[str, str] = {
    "textual-dark": "dark",
    "textual-light": "light",
    HIGH_CONTRAST.name: "high contrast",
}
"""Theme name -> what the palette and `T` call it, in the order `T` cycles them."""
