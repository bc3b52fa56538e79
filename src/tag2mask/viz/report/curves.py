"""Report section (6): loss curves of both prompt trainings, as inline SVG."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

from tag2mask.viz.report.html import na
from tag2mask.viz.report.run import RunView, TASKS, read_losses


MAX_CURVE_POINTS = 400


def bin_means(points: list[tuple[float, float]], n_max: int) -> list[tuple[float, float]]:
    """At most ``n_max`` points: consecutive points averaged in equal-count bins."""
    if len(points) <= n_max:
        return points
    arr = np.asarray(points)
    return [(float(b[:, 0].mean()), float(b[:, 1].mean())) for b in np.array_split(arr, n_max)]


def loss_svg(points: Sequence[tuple[float, float]], title: str, width: int = 360, height: int = 170) -> str:
    """An inline SVG line chart of (iteration, loss) points: a polyline with min/max axis labels."""
    left, right, top, bottom = 48, 10, 18, 26
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1.0
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1.0 - (y - y0) / (y1 - y0)) * ph

    poly = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(title, quote=True)}">'
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fcfcfc" stroke="#bbb"/>'
        f'<polyline fill="none" stroke="#1f6fb4" stroke-width="1.3" points="{poly}"/>'
        f'<text x="{left}" y="12">{escape(title)}</text>'
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{y1:.3g}</text>'
        f'<text x="{left - 4}" y="{top + ph}" text-anchor="end">{y0:.3g}</text>'
        f'<text x="{left}" y="{height - 10}">{x0:g}</text>'
        f'<text x="{left + pw}" y="{height - 10}" text-anchor="end">{x1:g}</text>'
        f'<text x="{left + pw / 2:.0f}" y="{height - 10}" text-anchor="middle">iteration</text>'
        "</svg>"
    )


def _loss_meaning(loss_name: str, rises: bool) -> str:
    """What a prompt-training loss curve measures, and why a rising curve can be fine (appended to its caption)."""
    if loss_name != "cal":
        return ""
    text = (". CAL (SPEC §4.2) measures the raw seg-task CAMs against the coarse seeds: foreground values are pulled "
            "up to the CAM's own maximum inside the seed region, background values pushed down to 0. The target "
            "moves with the CAMs' scale, so the curve can rise while the CAMs sharpen")
    if rises:
        text += ("; here it rose, which is not a failure by itself: judge this task by the fine seeds' mIoU "
                 "(Seed quality) rather than by this curve")
    return text


def curves_section(run: RunView) -> str:
    out = []
    for task in TASKS:
        path = run.path / f"train_{task}" / "metrics.jsonl"
        if not path.is_file():
            out.append(na(f"train_{task}/metrics.jsonl (prompt training of the {task} task has not run)"))
            continue
        points = read_losses(path)
        if not points:
            out.append(na(f"train_{task}/metrics.jsonl holds no finite loss yet"))
            continue
        shown = bin_means(points, MAX_CURVE_POINTS)
        loss_name = getattr(run.config.train, task).loss if run.config is not None else "loss"
        note = f"{len(points)} iterations, first loss {points[0][1]:.4g}, last {points[-1][1]:.4g}"
        if len(shown) < len(points):
            note += f"; {len(shown)} points shown (means of consecutive iterations)"
        note += _loss_meaning(loss_name, rises=points[-1][1] > points[0][1])
        out.append(f"<figure style=\"max-width:none\">{loss_svg(shown, f'{task} task: {loss_name} loss')}"
                   f"<figcaption>{escape(note)}</figcaption></figure>")
    return '<div class="row">' + "".join(out) + "</div>"
