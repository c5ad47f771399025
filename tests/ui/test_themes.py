"""Every pane follows the theme and NO_COLOR.

No text in the header, the heatmap or the alert log has a WCAG contrast under 4.5:1 (AA)
against its background, in any theme the app offers or under NO_COLOR. Contrast is
computed from the segments the screen sends to the terminal (after Textual's filters:
ANSI to truecolor, and NO_COLOR's monochrome), run by run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest
from rich.color import Color
from rich.segment import Segment
from textual.widget import Widget
from ui_helpers import manual_app

from gradtui.sources.synthetic import ScriptedSource, SyntheticRun
from gradtui.ui.app import GradTUIApp
from gradtui.ui.scale import FLAG_GLYPHS
from gradtui.ui.themes import THEMES

AA = 4.5
"""WCAG 2 level AA for normal text."""
DIM_FACTOR = 0.5
"""A dim cell's colour: this far from its background towards its own colour (Textual's `DimFilter`)."""
SIZE = (120, 40)

RGB = tuple[int, int, int]


def luminance(rgb: RGB) -> float:
    """WCAG 2 relative luminance of an sRGB triplet."""

    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.04045 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: RGB, b: RGB) -> float:
    """WCAG 2 contrast ratio, 1 to 21."""
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _blend(a: RGB, b: RGB, t: float) -> RGB:
    r, g, bl = (round(x + (y - x) * t) for x, y in zip(a, b, strict=True))
    return (r, g, bl)


@dataclass(frozen=True)
class Cell:
    """One run of text as the terminal draws it."""

    pane: str
    y: int
    text: str
    fg: RGB
    bg: RGB

    @property
    def ratio(self) -> float:
        return contrast(self.fg, self.bg)


def _rgb(color: Color | None, default: RGB) -> RGB:
    if color is None or color.is_default:
        return default
    t = color.get_truecolor()
    return (t.red, t.green, t.blue)


def _is_text(ch: str) -> bool:
    # Borders and rules (box drawing) are lines, not text; the rest must be readable.
    return not ch.isspace() and not 0x2500 <= ord(ch) <= 0x257F


def resolve(segment: Segment, background: RGB, foreground: RGB) -> tuple[RGB, RGB]:
    """The (text, background) colours a segment is drawn in.

    A segment with no background shows the theme's; one with no colour of its own shows the
    terminal's default text colour, which is taken to be the other kind of theme's (light
    text where the theme is light): a pane that does not set its colours fails here.
    """
    style = segment.style
    if style is None:
        return foreground, background
    bg = _rgb(style.bgcolor, background)
    fg = _rgb(style.color, foreground)
    if style.reverse:
        fg, bg = bg, fg
    if style.dim:
        fg = _blend(bg, fg, DIM_FACTOR)
    return fg, bg


def pane_segments(app: GradTUIApp, widget: Widget) -> Iterator[tuple[int, Segment]]:
    """The segments the screen draws inside a pane, with their line (border included, scrollbar not)."""
    lines = app.screen._compositor.render_strips()
    region = widget.region
    right = region.right
    scrollbar = getattr(widget, "vertical_scrollbar", None)
    if widget.show_vertical_scrollbar and scrollbar is not None and scrollbar.region.width:
        right = min(right, scrollbar.region.x)
    for y in range(region.y, region.bottom):
        for seg in lines[y].crop(region.x, right):
            yield y, seg


def text_cells(app: GradTUIApp, panes: dict[str, Widget]) -> list[Cell]:
    """The text runs drawn inside each pane, in the colours the terminal shows them."""
    background = _rgb(Color.parse(app.get_css_variables()["background"]), (0, 0, 0))
    # Where a segment has no colour the terminal's own shows: assume the opposite kind of theme.
    foreground: RGB = (0, 0, 0) if app.current_theme.dark else (255, 255, 255)
    out: list[Cell] = []
    for pane, widget in panes.items():
        for y, seg in pane_segments(app, widget):
            text = "".join(ch for ch in seg.text if _is_text(ch))
            if text:
                fg, bg = resolve(seg, background, foreground)
                out.append(Cell(pane, y, text, fg, bg))
    return out


def exploding_app() -> GradTUIApp:
    """A run with every kind of trouble on screen: NaN loss, exploding and non-finite layers, critical alerts."""
    run = SyntheticRun("exploding", 12, run="exploding-mlp")
    return manual_app(ScriptedSource(run.events(300), name="replay: exploding.gtr"))


Check = Callable[[GradTUIApp], Awaitable[None]]


def on_screen(check: Check, theme: str | None = None) -> None:
    """Run `check` on the exploding run drawn at 120x40 in `theme` (None: the default)."""
    app = exploding_app()

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            if theme is not None:
                app.theme = theme
            await pilot.pause()
            app.poll_source()
            await pilot.pause()
            await pilot.pause()
            await check(app)

    asyncio.run(main())


def low_contrast(theme: str | None) -> list[Cell]:
    """The text runs under AA in the header, heatmap and alert log of the exploding run."""
    found: list[Cell] = []

    async def check(app: GradTUIApp) -> None:
        panes: dict[str, Widget] = {"header": app.status_header, "heatmap": app.heatmap, "alerts": app.alert_log}
        cells = text_cells(app, panes)
        assert {c.pane for c in cells} == set(panes), "every pane drew some text"
        found.extend(c for c in cells if c.ratio < AA)

    on_screen(check, theme)
    return found


def _report(cells: list[Cell]) -> str:
    return "\n".join(
        f"{c.pane} y={c.y} {c.text!r}: {c.ratio:.2f} (#{bytes(c.fg).hex()} on #{bytes(c.bg).hex()})" for c in cells
    )


@pytest.mark.parametrize("theme", list(THEMES))
def test_every_pane_is_readable_in_each_theme(theme: str) -> None:
    bad = low_contrast(theme)
    assert not bad, "text under 4.5:1:\n" + _report(bad)


def test_every_pane_is_readable_under_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    bad = low_contrast(None)
    assert not bad, "text under 4.5:1:\n" + _report(bad)


def test_contrast_is_wcag() -> None:
    assert contrast((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast((118, 118, 118), (255, 255, 255)) == pytest.approx(4.54, abs=0.01)
    assert contrast((12, 34, 56), (12, 34, 56)) == 1.0


@pytest.mark.parametrize("theme", list(THEMES))
def test_every_pane_draws_in_its_own_colours(theme: str) -> None:
    """Nothing in a pane is left to the terminal's colours (white text on the terminal's
    background after `T`, as the heatmap, charts and log once were)."""

    async def check(app: GradTUIApp) -> None:
        panes = [app.status_header, app.heatmap, *app.charts, app.alert_log]
        bare = [
            (type(w).__name__, y, seg.text)
            for w in panes
            for y, seg in pane_segments(app, w)
            if seg.style is None or seg.style.bgcolor is None or (seg.text.strip() and seg.style.color is None)
        ]
        assert not bare, bare[:10]

    on_screen(check, theme)


def test_no_color_tells_trouble_by_reverse_not_by_a_grey(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")

    async def check(app: GradTUIApp) -> None:
        foreground = Color.parse(app.get_css_variables()["foreground"]).get_truecolor()
        blowups = (FLAG_GLYPHS["nonfinite"], FLAG_GLYPHS["exploding"])
        seen = []
        for pane in (app.status_header, app.alert_log):
            for _y, seg in pane_segments(app, pane):
                text = seg.text.strip()
                if text == "nan" or text.startswith(blowups):
                    seen.append(text)
                    assert seg.style is not None and seg.style.reverse and seg.style.bold, text
                    # Reversed: the theme's text colour is the background, not a grey of a colour.
                    assert seg.style.color is not None and seg.style.color.get_truecolor() == foreground, text
        assert "nan" in seen and any(t.startswith(blowups) for t in seen)

    on_screen(check)


def test_the_palette_offers_our_themes_and_one_quit() -> None:
    async def check(app: GradTUIApp) -> None:
        commands = list(app.get_system_commands(app.screen))
        titles = [c.title for c in commands]
        themes = [t for t in titles if t.startswith("Theme")]
        assert themes == [f"Theme: {label}" for label in THEMES.values()], "no picker of Textual's other themes"
        assert [t for t in titles if "quit" in t.lower()] == ["Quit (asks first when that stops a training process)"]
        assert "Keys" not in titles, "? is the help"
        assert "Screenshot" in titles

    on_screen(check)
