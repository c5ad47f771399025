"""The colours of the hand-drawn widgets (header, heatmap, charts, alert log), in one place.

Textual paints a widget's own colours under what `render` returns, but strips from
`render_line` reach the screen as they are: a segment with no colour shows the terminal's
own, whatever the theme, and NO_COLOR greys a coloured one into its background. So each
of these widgets owns a `Look`: every line is drawn over the widget's resolved style
(`Look.line`), and every colour in its text is a role (`ROLES`), a component class whose
rules, per theme and under NO_COLOR, are `role_css`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from rich.segment import Segment
from rich.style import Style
from rich.text import Span, Text
from textual.strip import Strip
from textual.widget import Widget

from gradtui.model.events import FLAG_PRIORITY
from gradtui.ui.scale import PLAIN_ROLES

TEXT_ROLES: tuple[str, ...] = ("muted", "ok", "warn", "bad", "note")
"""Roles of words: labels and asides, went well, needs a look, went wrong, the viewer's own state."""
ROLES: tuple[str, ...] = (*TEXT_ROLES, *FLAG_PRIORITY)
"""Every colour role; a flag kind's role is its name, so the header, heatmap and log draw a flag alike."""
ROLE_CLASSES: frozenset[str] = frozenset(f"role--{role}" for role in ROLES)
__all__ = ["PLAIN_ROLES", "ROLES", "ROLE_CLASSES", "TEXT_ROLES", "Look", "ink", "role_css", "role_style"]
# PLAIN_ROLES (the roles on a plain Rich console) lives in `gradtui.ui.scale`, pure Rich like the renderables.
"""The component classes a widget with a `Look` declares."""

_ROLE_RULES = """
{w} > .role--muted {{ color: $text-muted; }}
{w} > .role--ok {{ color: $text-success; }}
{w} > .role--warn {{ color: $text-warning; }}
{w} > .role--bad {{ color: $text-error; }}
{w} > .role--note {{ color: $text-primary; }}
{w} > .role--nonfinite {{ color: $text-error; text-style: bold reverse; }}
{w} > .role--exploding {{ color: $text-error; text-style: bold; }}
{w} > .role--vanishing {{ color: $text-primary; text-style: bold; }}
{w} > .role--dead {{ color: $text-muted; text-style: bold; }}
{w} > .role--loss_spike {{ color: $text-warning; text-style: bold; }}
{w}:nocolor > .role--ok, {w}:nocolor > .role--note {{ color: $foreground; }}
{w}:nocolor > .role--bad, {w}:nocolor > .role--nonfinite, {w}:nocolor > .role--exploding {{
    color: $foreground;
    text-style: bold reverse;
}}
{w}:nocolor > .role--warn, {w}:nocolor > .role--vanishing,
{w}:nocolor > .role--dead, {w}:nocolor > .role--loss_spike {{
    color: $foreground;
    text-style: bold;
}}
"""
# Under NO_COLOR Textual greys every colour: what went wrong is told by reverse or bold, never by a grey.


def role_css(widget: str) -> str:
    """The roles' rules for the widget type `widget` (a widget's DEFAULT_CSS is scoped to its type)."""
    return _ROLE_RULES.format(w=widget)


def role_style(spec: str | Style, roles: Mapping[str, Style]) -> Style:
    """A span's style: Rich words ("bold", "reverse") and at most one role ("bold bad")."""
    if isinstance(spec, Style):
        return spec
    words = spec.split()
    style = Style.parse(" ".join(w for w in words if w not in roles))
    for word in words:
        if word in roles:
            style = roles[word] + style
    return style


def ink(text: Text, roles: Mapping[str, Style] = PLAIN_ROLES) -> Text:
    """`text` with its roles (styles such as "bold bad", see `role_style`) resolved by `roles`."""
    out = text.copy()
    out.style = role_style(text.style, roles)
    out.spans = [Span(s.start, s.end, role_style(s.style, roles)) for s in text.spans]
    return out


class Look:
    """A hand-drawn widget's colours, resolved from its styles and kept until they change.

    The widget lists `ROLE_CLASSES` in its COMPONENT_CLASSES and `role_css` in its
    DEFAULT_CSS, and calls `forget` from `notify_style_update`.
    """

    def __init__(self, widget: Widget) -> None:
        self.widget = widget
        self._base: Style | None = None
        self._roles: dict[str, Style] | None = None

    @property
    def base(self) -> Style:
        """The widget's resolved colours and text style: the base of every line it draws."""
        if self._base is None:
            self._base = self.widget.rich_style
        return self._base

    @property
    def roles(self) -> dict[str, Style]:
        """Every role's style in the widget."""
        if self._roles is None:
            self._roles = {role: self.part(f"role--{role}") for role in ROLES}
        return self._roles

    def part(self, component: str) -> Style:
        """A component class's style as Textual draws the widget's own text.

        Not the partial style: that keeps an `auto` colour (`$text`, `$text-muted`)
        unresolved, which Rich draws white on any background.
        """
        return self.widget.get_component_rich_style(component)

    def line(self, segments: Iterable[Segment], width: int) -> Strip:
        """One line: cut or padded to `width`, over the widget's own style."""
        base = self.base
        return Strip(segments).adjust_cell_length(width, base).apply_style(base)

    def blank(self, width: int) -> Strip:
        return Strip.blank(width, self.base)

    def ink(self, text: Text) -> Text:
        """`text` with its roles in the widget's colours."""
        return ink(text, self.roles)

    def forget(self) -> None:
        """Drop what was resolved. Only that: Textual updates the component styles after
        `notify_style_update`, so a style looked up there would be the old theme's (and
        stay in Textual's own cache)."""
        self._base = None
        self._roles = None
