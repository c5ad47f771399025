"""The viewer's themes: Textual's dark, a light one, and a high-contrast one of our own.

Only these are offered (`T`, the command palette): every pane's text reaches WCAG AA
contrast in each of them (tests/ui/test_theme_contrast.py).
"""

from __future__ import annotations

from dataclasses import replace

from textual.theme import BUILTIN_THEMES, Theme

_TEXTUAL_LIGHT = BUILTIN_THEMES["textual-light"]

LIGHT = replace(
    _TEXTUAL_LIGHT,
    name="gradtui-light",
    variables={
        **_TEXTUAL_LIGHT.variables,
        # Textual's own reach 3.2:1 and 3.8:1 on the light panel: darker, to AA.
        "text-success": "#18602F",
        "text-warning": "#754800",
    },
)
"""Textual's light theme with its green and amber text dark enough to read."""

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
        # Cyan, not the primary yellow: vanishing (cold) stays apart from loss spikes and warnings.
        "text-primary": "#56ffff",
    },
)
"""White on black, yellow keys and focus: for glare, projectors and low vision."""

REGISTERED: tuple[Theme, ...] = (LIGHT, HIGH_CONTRAST)
"""The themes the app registers (its dark one is Textual's own)."""

THEMES: dict[str, str] = {
    "textual-dark": "dark",
    LIGHT.name: "light",
    HIGH_CONTRAST.name: "high contrast",
}
"""Theme name -> what the palette and `T` call it, in the order `T` cycles them."""
