"""HTML primitives of the report: the page's CSS, numbers, tables, colour swatches, figure panels, and a section that
turns its own failure into a "not available" line."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np

from tag2mask.viz import figures as fig


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #222; font-size: 14px; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em;
margin-top: 1.8em; } h3 { margin: 1.2em 0 0.4em; }
table { border-collapse: collapse; margin: 0.5em 0; } th, td { border: 1px solid #ddd; padding: 3px 8px; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; background: #fafafa; } tr.best td { background: #eef7ee; }
tr.tuned td { background: #fff6e0; }
table.kv td:first-child { width: 11em; font-weight: bold; background: #f3f3f3; }
pre { background: #f7f7f7; padding: 0.6em; border: 1px solid #e4e4e4; white-space: pre-wrap; }
.na { color: #a33; font-style: italic; } .note { color: #555; font-size: 0.92em; }
.warn { background: #fff3cd; border: 1px solid #e0b84c; padding: 0.6em 0.8em; font-weight: bold; }
.row { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; margin-bottom: 6px; }
figure { margin: 0; max-width: 420px; } figure img { display: block; border: 1px solid #ccc;
image-rendering: pixelated; } figcaption { font-size: 0.85em; color: #333; margin-top: 2px; }
figure.missing { width: 200px; min-height: 60px; border: 1px dashed #ccc; padding: 6px; }
.sw { display: inline-block; width: 0.9em; height: 0.9em; border: 1px solid #888; vertical-align: middle;
margin-right: 2px; }
.imgblock { border-top: 1px solid #eee; padding-top: 0.6em; margin-top: 1em; }
.cbar { height: 10px; border: 1px solid #999; margin-top: 3px; } .cbar-labels { display: flex;
justify-content: space-between; font-size: 0.8em; color: #444; }
svg text { font-size: 10px; fill: #444; }
"""


def na(what: str) -> str:
    return f'<p class="na">not available: {escape(what)}</p>'


def num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def signed(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}"


def table(header: Sequence[str] | None, rows: Sequence[Sequence[str]], numeric: Sequence[bool] | None = None,
           row_classes: Sequence[str] | None = None, table_class: str = "") -> str:
    """An HTML table (no header row when ``header`` is None); the cells are HTML already (escape text before)."""
    numeric = numeric or [False] * max((len(r) for r in rows), default=0)
    out = [f'<table class="{table_class}">' if table_class else "<table>"]
    if header is not None:
        out += ["<tr>", *(f"<th>{h}</th>" for h in header), "</tr>"]
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and row_classes[i] else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        out += [f'<td class="num">{c}</td>' if numeric[j] else f"<td>{c}</td>" for j, c in enumerate(row)]
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def swatch(label_id: int) -> str:
    r, g, b = (int(v) for v in fig.colorize_labels(np.array([label_id]))[0])
    return f'<span class="sw" style="background:rgb({r},{g},{b})"></span>'


def rgb_swatch(rgb: tuple[int, int, int]) -> str:
    return f'<span class="sw" style="background:rgb({rgb[0]},{rgb[1]},{rgb[2]})"></span>'


def guarded(title: str, body: Callable[[], str]) -> str:
    """A section; an unexpected error inside it becomes a "not available" line (the report is never lost)."""
    try:
        content = body()
    except Exception as e:  # noqa: BLE001
        content = na(f"{e.__class__.__name__}: {e}")
    return f"<h2>{escape(title)}</h2>\n{content}\n"


def subsection(body: Callable[[], str]) -> str:
    """One piece of a section; an unexpected error becomes a one-line "not available" note in its place."""
    try:
        return body()
    except Exception as e:  # noqa: BLE001 - a report never fails on a malformed file
        return na(f"{e.__class__.__name__}: {e}")


def duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class Panel:
    caption: str  # HTML
    rgb: np.ndarray | None = None
    missing: str = ""  # "not available" text when rgb is None
    colour_bar: str = ""  # HTML shown under the image (heat maps: what the colours mean)

    def html(self) -> str:
        if self.rgb is None:
            return (f'<figure class="missing"><figcaption>{self.caption}</figcaption>'
                    f"{na(self.missing)}</figure>")
        h, w = self.rgb.shape[:2]
        k = display_factor(w)
        alt = escape(strip_tags(self.caption), quote=True)
        uri = fig.png_data_uri(self.rgb, PHOTO_COLOURS)
        return (f'<figure><img src="{uri}" width="{k * w}" height="{k * h}" alt="{alt}">{self.colour_bar}'
                f"<figcaption>{self.caption}</figcaption></figure>")


def display_factor(width: int) -> int:
    """The integer enlargement that shows a ``width``-px figure at least :data:`DISPLAY_WIDTH` px wide (1 when it
    already is); the browser enlarges it nearest-neighbour (``image-rendering: pixelated``), so label maps stay
    crisp and the page stays small."""
    return max(1, -(-DISPLAY_WIDTH // max(1, int(width))))


def colour_bar(low: str, high: str, what: str, no_value: bool = False) -> str:
    """A heat-colour legend: the gradient from ``low`` to ``high`` with what the values are."""
    grey = ""
    if no_value:
        grey = f" {rgb_swatch(fig.NO_VALUE_RGB)}no superpixel"
    return (f'<div class="cbar" style="background:{fig.heat_css_gradient()}"></div>'
            f'<div class="cbar-labels"><span>{escape(low)}</span><span>{escape(what)}{grey}</span>'
            f"<span>{escape(high)}</span></div>")


def strip_tags(text: str) -> str:
    out, inside = [], False
    for ch in text:
        if ch == "<":
            inside = True
        elif ch == ">":
            inside = False
        elif not inside:
            out.append(ch)
    return "".join(out)


def panel_row(panels: Sequence[Panel]) -> str:
    return '<div class="row">' + "".join(p.html() for p in panels) + "</div>"


DISPLAY_WIDTH = 384  # figures are shown at least this wide (px): small images are enlarged by an integer factor
# (nearest-neighbour, by the browser) and larger ones are stored downscaled to this width


PHOTO_COLOURS = 256  # figure panels with more colours are quantized to this many (lossy, ~3x smaller page)
