"""The HTML run report: one static, self-contained page per run folder (``RUN/report.html``).

:func:`write_report` reads what ``tag2mask run`` left in a run folder (see :mod:`tag2mask.stages.pipeline`) and
writes one HTML file that opens offline: inline CSS, images as base64 PNG data URIs, training curves as inline
SVG, no JavaScript and no external resource. Sections:

1. header — run folder, preset, dataset, split, image count, models (CLIP; SAM model or CPU superpixel method),
   dates, package versions, stage status;
2. seed quality — mIoU of all-background, argmax seeds of the cls and seg CAMs (best background exponent, labelled
   *tuned on ground truth*), coarse and fine SAMS seeds, the fine seeds' margins in points, the evaluation
   protocol and the per-class IoU of the seeds;
3. stage II — per segmentation network trained on the seeds (``RUN/stage2/<name>``, ``tag2mask train-seg``): its
   facts (network, backbone and its weights, labels, iterations, batch, crop, optimiser, training time, status),
   its results like App. Tables S2/S3/S6 (each prediction folder, then its CRF / SAMS refinements with the change
   over the network alone, an alpha tuned on ground truth flagged), its loss and validation mIoU curves;
4. efficiency — time per stage from the manifest (quasi-superpixel generation listed apart, as the paper excludes
   it), totals, learnable parameters per task (count, MB at fp32 and fp16) — like App. Table S1;
5. figures for ``n_images`` images (the first ones with at least one tag) — like App. Figures S1–S4: the image and
   its tags, the ground truth, cls-task vs seg-task CAMs per positive class, the quasi-superpixels coloured by
   level, the SAMS score map of the top class, the coarse and fine seeds, and the dense-CRF seed when
   ``pydensecrf`` is installed;
6. training curves — loss per iteration of both prompt trainings.

Every piece is optional: a stage that has not run, a split without ground truth or a missing superpixel folder
gives a short "not available: …" line instead of an error, so the report also describes partial runs.
"""

from __future__ import annotations

import datetime as _dt
import importlib.util
import json
import math
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from tag2mask.io import read_json, write_text
from tag2mask.viz import figures as fig

__all__ = ["DEFAULT_NAME", "build_report", "learnable_parameters", "load_superpixel_arrays", "loss_svg", "write_report"]

DEFAULT_NAME = "report.html"
DISPLAY_WIDTH = 384  # figures are shown at least this wide (px): small images are enlarged by an integer factor
# (nearest-neighbour, by the browser) and larger ones are stored downscaled to this width
TASKS = ("cls", "seg")
SEEDS_OF_TASK = {"cls": "seeds_coarse", "seg": "seeds_fine"}
#: The method's stages in pipeline order (quasi-superpixels are reported apart), with a short description.
METHOD_STAGES: tuple[tuple[str, str], ...] = (
    ("train_cls", "prompt training, classification task"),
    ("cams_cls", "CAMs + CAA, classification task"),
    ("seeds_coarse", "SAMS coarse seeds"),
    ("train_seg", "prompt training, segmentation task"),
    ("cams_seg", "CAMs + CAA, segmentation task"),
    ("seeds_fine", "SAMS fine seeds"),
)
SUPERPIXEL_STAGE = ("superpixels", "quasi-superpixel generation (computed once, cached, shared by runs)")
CRF_MISSING = "dense CRF not installed (pip install -e '.[crf]')"
MAX_CURVE_POINTS = 400
PHOTO_COLOURS = 256  # figure panels with more colours are quantized to this many (lossy, ~3x smaller page)
LABEL_ALPHA = 0.7  # opacity of label colours (ground truth, seeds) over the image

_CSS = """
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


# ---------------------------------------------------------------------------------------------------------------
# the run folder


@dataclass
class _Run:
    """What the report reads from a run folder; every field may be missing (``None`` / empty)."""

    path: Path
    config: Any = None  # tag2mask.config.Config
    config_error: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None

    @property
    def stages(self) -> dict[str, Any]:
        return self.manifest.get("stages", {}) or {}

    def stage(self, name: str) -> dict[str, Any] | None:
        rec = self.stages.get(name)
        return rec if isinstance(rec, dict) else None

    def superpixels_folder(self) -> Path | None:
        """The cache folder of the split's quasi-superpixels: the manifest's, else the config's default."""
        rec = self.stage("superpixels")
        folder = (rec or {}).get("inputs", {}).get("folder")
        if folder:
            return Path(folder)
        if self.config is not None:
            try:
                from tag2mask.stages.superpixels import superpixels_dir

                default = superpixels_dir(self.config, self.config.data.train_split)
                return default if default.is_dir() else None
            except Exception:  # noqa: BLE001 - a report never fails on a missing piece
                return None
        return None


def _read_run(path: Path) -> _Run:
    from tag2mask.config import load_config

    run = _Run(path)
    config_path = path / "config.yaml"
    if config_path.is_file():
        try:
            run.config = load_config(config_path)
            root = Path(run.config.data.root).expanduser()
            if not root.is_absolute() and not root.exists() and (path / root).exists():
                run.config.data.root = str(path / root)  # demo runs keep their dataset inside the run folder
        except Exception as e:  # noqa: BLE001
            run.config_error = f"config.yaml could not be read ({e.__class__.__name__}: {e})"
    else:
        run.config_error = "config.yaml not found"
    if (path / "manifest.json").is_file():
        try:
            run.manifest = read_json(path / "manifest.json")
        except (OSError, ValueError) as e:
            run.manifest = {"error": str(e)}
    if (path / "metrics.json").is_file():
        try:
            run.metrics = read_json(path / "metrics.json")
        except (OSError, ValueError):
            run.metrics = None
    return run


# ---------------------------------------------------------------------------------------------------------------
# small HTML helpers


def _na(what: str) -> str:
    return f'<p class="na">not available: {escape(what)}</p>'


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _signed(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:+.{digits}f}"


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[str]], numeric: Sequence[bool] | None = None,
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


def _swatch(label_id: int) -> str:
    r, g, b = (int(v) for v in fig.colorize_labels(np.array([label_id]))[0])
    return f'<span class="sw" style="background:rgb({r},{g},{b})"></span>'


def _rgb_swatch(rgb: tuple[int, int, int]) -> str:
    return f'<span class="sw" style="background:rgb({rgb[0]},{rgb[1]},{rgb[2]})"></span>'


def _guarded(title: str, body: Callable[[], str]) -> str:
    """A section; an unexpected error inside it becomes a "not available" line (the report is never lost)."""
    try:
        content = body()
    except Exception as e:  # noqa: BLE001
        content = _na(f"{e.__class__.__name__}: {e}")
    return f"<h2>{escape(title)}</h2>\n{content}\n"


# ---------------------------------------------------------------------------------------------------------------
# (1) header


def _superpixel_source(run: _Run) -> str:
    """Which quasi-superpixels the run uses: SAM model, CPU method or imported annotations."""
    about: dict[str, Any] = {}
    folder = run.superpixels_folder()
    if folder is not None and (folder / "superpixels.json").is_file():
        try:
            about = read_json(folder / "superpixels.json")
        except (OSError, ValueError):
            about = {}
    if about.get("source") == "import":
        return f"imported SAM annotations from {about.get('import')}"
    config = run.config
    if config is None:
        return "unknown (no config)"
    sp = config.superpixels
    imported = getattr(sp, "import_dir", None)
    if imported:
        return f"imported SAM annotations from {imported}"
    if sp.source in ("slic", "felzenszwalb"):
        return f"CPU method {sp.source} (no SAM), generator pattern {sp.preset}"
    from tag2mask.models.weights import HF_MASK_SOURCES, mask_source_weights

    grid = f"generator pattern {sp.preset}, {sp.points_per_side} points per side, {sp.crop_n_layers} crop layer(s)"
    weights = mask_source_weights(sp.source, config.models.sam)
    if weights is not None:
        return f"{HF_MASK_SOURCES[sp.source][0]} through transformers (weights {weights}), {grid}"
    return f"SAM {config.models.sam_type} (weights {config.models.sam}), {grid}"


def _image_count(run: _Run) -> str:
    if run.metrics and "images" in run.metrics:
        return f"{run.metrics['images']} (evaluated)"
    for name in ("superpixels", "seeds_fine", "seeds_coarse", "cams_cls"):
        rec = run.stage(name)
        if rec and isinstance(rec.get("counts"), dict) and "images" in rec["counts"]:
            return f"{rec['counts']['images']} (from the {name} stage)"
    return "unknown"


def _header(run: _Run) -> str:
    c = run.config
    rows: list[tuple[str, str]] = [("run folder", str(run.path.resolve()))]
    if c is None:
        rows.append(("config", run.config_error))
    else:
        rows += [
            ("preset", c.preset),
            ("dataset", f"{c.data.dataset} ({c.data.root})"),
            ("split", f"seeds made on {c.data.train_split}; evaluated on {c.data.eval_split}"),
            ("images", _image_count(run)),
            ("CLIP", c.models.clip),
            ("quasi-superpixels", _superpixel_source(run)),
            ("seeding", f"coarse: {c.seeds.coarse.method}, bg power {c.seeds.coarse.bg_power:g}; "
                        f"fine: {c.seeds.fine.method}, bg power {c.seeds.fine.bg_power:g}"),
        ]
    stages = run.stages
    finished = sorted(str(r.get("finished")) for r in stages.values() if isinstance(r, dict) and r.get("finished"))
    rows.append(("run created", str(run.manifest.get("created", "unknown"))))
    rows.append(("last stage finished", finished[-1] if finished else "no stage finished yet"))
    rows.append(("report written", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")))
    versions: dict[str, str] = {}
    for rec in stages.values():
        if isinstance(rec, dict) and isinstance(rec.get("versions"), dict):
            versions = rec["versions"]
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    status = []
    for name in ("superpixels", *(s for s, _ in METHOD_STAGES)):
        rec = run.stage(name)
        status.append(f"{name}: {rec.get('status', '?') if rec else 'not run'}")
    status.append(f"evaluate: {'done' if run.metrics else 'not run'}")
    rows.append(("stages", "; ".join(status)))
    check = run.manifest.get("data_check")
    skipped = check.get("skipped") if isinstance(check, dict) and isinstance(check.get("skipped"), list) else None
    if skipped is not None:
        rows.append(("data check", f"{len(skipped)} sample(s) of {check.get('split', '?')} left out "
                                   "(data.on_error=skip)" if skipped else "every image and mask passed"))
    out = _table(None, [[escape(k), escape(str(v))] for k, v in rows], table_class="kv")
    if skipped:
        items = "".join(f"<li><code>{escape(str(e[0]))}</code>: {escape(str(e[1]))}</li>" for e in skipped
                        if isinstance(e, list) and len(e) == 2)
        out += f'<details open><summary>Samples left out, with the reason</summary><ul>{items}</ul></details>'
    return out


# ---------------------------------------------------------------------------------------------------------------
# (2) seed quality


def _eval_report(run: _Run, name: str) -> dict[str, Any] | None:
    """``RUN/evaluate/<name>_<split>.json`` (any split when the metrics do not name one)."""
    folder = run.path / "evaluate"
    split = (run.metrics or {}).get("split")
    candidates = [folder / f"{name}_{split}.json"] if split else []
    candidates += sorted(folder.glob(f"{name}_*.json")) if folder.is_dir() else []
    for path in candidates:
        if path.is_file():
            try:
                return read_json(path)
            except (OSError, ValueError):
                continue
    return None


def _protocol_lines(description: str, tuned: Any, metrics: dict[str, Any]) -> list[str]:
    """The seed evaluation's protocol with what was tuned on ground truth said per row of the table: the seeds'
    own GT-chosen values (from their evaluation), the argmax rows' exponent, nothing for all background."""
    lines = [line for line in description.splitlines() if not (
        line.startswith("no hyper-parameter was chosen") or line.startswith("tuned on ground truth")
        or line.startswith("  - "))]
    if isinstance(tuned, list) and tuned:
        lines.append("coarse and fine seeds: tuned on ground truth (not a clean held-out number):")
        lines += [f"  - {t}" for t in tuned]
    elif isinstance(tuned, list):
        lines.append("coarse and fine seeds: no hyper-parameter was chosen with ground truth")
    else:
        lines.append("coarse and fine seeds: what was tuned on ground truth is not recorded (no evaluation report)")
    for t in TASKS:
        a = metrics.get(f"argmax_{t}")
        if isinstance(a, dict):
            lines.append(f"argmax seeds ({t} CAMs): tuned on ground truth: {a.get('tuned_on_ground_truth', '')}")
    lines.append("all background: nothing to tune")
    return lines


def _seed_quality(run: _Run) -> str:
    m = run.metrics
    if not m:
        why = "metrics.json not found (the evaluate step has not run yet, or the split has no ground truth)"
        return _na(why)
    if m.get("pipeline") == "clip_es":
        return _seed_quality_training_free(run)
    fine = m.get("seeds_fine")
    c = run.config
    rows: list[tuple[str, Any, str]] = [("all background", m.get("all_background"), "the floor any seed must beat")]
    for task in TASKS:
        a = m.get(f"argmax_{task}")
        if isinstance(a, dict):
            sweep = ", ".join(f"p={float(p):g}: {_num(v)}" for p, v in (a.get("sweep") or {}).items())
            note = (f"best bg exponent p={float(a.get('bg_power', float('nan'))):g}, tuned on ground truth "
                    f"({a.get('tuned_on_ground_truth', '')}); sweep {sweep}")
            rows.append((f"argmax seeds, {task} CAMs", a.get("miou"), note))
        else:
            rows.append((f"argmax seeds, {task} CAMs", None, "not evaluated"))
    for key, task, label in (("seeds_coarse", "cls", "coarse"), ("seeds_fine", "seg", "fine")):
        settings = getattr(c.seeds, label) if c is not None else None
        method = settings.method.upper() if settings is not None else "SAMS"
        note = (f"{settings.method} on the {task} CAMs, bg power {settings.bg_power:g}" if settings is not None
                else f"from the {task} CAMs")
        rows.append((f"{method} {label} seeds", m.get(key), note))
    body_rows, classes = [], []
    for i, (label, value, note) in enumerate(rows):
        is_fine = i == len(rows) - 1
        delta = None if fine is None or value is None else float(fine) - float(value)
        body_rows.append([escape(label), _num(value), "" if is_fine else _signed(delta), escape(note)])
        classes.append("best" if is_fine else "")
    out = [f"<p>Seed mIoU (%) on <b>{escape(str(m.get('split', '?')))}</b> "
           f"({escape(str(m.get('images', '?')))} images).</p>",
           _table(["seeds", "mIoU (%)", "fine − this (points)", "how"], body_rows, [False, True, True, False],
                  classes)]
    summary = []
    for task in TASKS:
        a = m.get(f"argmax_{task}")
        if fine is not None and isinstance(a, dict) and a.get("miou") is not None:
            summary.append(f"{_signed(float(fine) - float(a['miou']))} points over the argmax seeds of the {task} CAMs "
                           f"(p={float(a.get('bg_power', float('nan'))):g}, tuned on ground truth)")
    if fine is not None and m.get("all_background") is not None:
        summary.append(f"{_signed(float(fine) - float(m['all_background']))} points over all-background")
    if summary:
        out.append(f"<p>The fine seeds score {escape('; '.join(summary))}.</p>")
    fine_report = _eval_report(run, "seeds_fine")
    coarse_report = _eval_report(run, "seeds_coarse")
    protocol = (fine_report or {}).get("protocol", {}).get("description") or m.get("protocol")
    out.append("<h3>Evaluation protocol</h3>")
    if protocol:
        tuned = (fine_report or {}).get("protocol", {}).get("tuned_on_gt")
        out.append(f"<pre>{escape(chr(10).join(_protocol_lines(str(protocol), tuned, m)))}</pre>")
    else:
        out.append(_na("no protocol recorded in metrics.json"))
    out.append("<h3>Per-class IoU (%)</h3>")
    if fine_report is None or not fine_report.get("per_class"):
        out.append(_na("evaluate/seeds_fine_<split>.json not found"))
    else:
        coarse_iou = {r["id"]: r.get("iou") for r in (coarse_report or {}).get("per_class", [])}
        rows2 = []
        for r in fine_report["per_class"]:
            iou = r.get("iou")
            rows2.append([
                str(r["id"]), _swatch(int(r["id"])) + escape(str(r["class"])),
                _num(None if coarse_iou.get(r["id"]) is None else 100.0 * coarse_iou[r["id"]]) if coarse_report
                else "n/a",
                _num(None if iou is None else 100.0 * iou),
                str(r.get("gt_pixels", "")), "yes" if r.get("in_mean") else "no",
            ])
        out.append(_table(["id", "class", "coarse IoU", "fine IoU", "GT pixels", "in mIoU"], rows2,
                          [True, False, True, True, True, False]))
        out.append('<p class="note">mIoU = mean IoU over the classes present in the ground truth, background '
                   "included. Classes absent from both ground truth and seeds show n/a.</p>")
    return "\n".join(out)


def _seed_quality_training_free(run: _Run) -> str:
    """Seed quality of a training-free run (``pipeline: clip_es``): its seeds, CLIP-ES's argmax seeds and the
    all-background floor, with the protocol and the per-class IoU."""
    m = run.metrics
    a = m.get("argmax_clip_es") or {}
    sweep = ", ".join(f"alpha={float(p):g}: {_num(v)}" for p, v in (a.get("sweep") or {}).items())
    method = str(m.get("seed_method", "sams"))
    rows = [
        ["all background", _num(m.get("all_background")), "the floor any seed must beat"],
        ["CLIP-ES argmax seeds", _num(a.get("miou")), escape(f"best alpha={float(a.get('bg_power', float('nan'))):g}, "
                                                             f"tuned on ground truth ({a.get('tuned_on_ground_truth', '')}); "
                                                             f"sweep {sweep}")],
        [escape(f"training-free seeds ({method})"), _num(m.get("seeds_clip_es")),
         escape(f"seeds.coarse.method={method} on CLIP-ES's CAMs (no prompt training)")],
    ]
    out = [f"<p>Training-free seed mIoU (%) on <b>{escape(str(m.get('split', '?')))}</b> "
           f"({escape(str(m.get('images', '?')))} images): CLIP-ES's fixed prompts, no prompt training.</p>",
           _table(["seeds", "mIoU (%)", "how"], rows, [False, True, False], ["", "", "best"])]
    report = _eval_report(run, "seeds_clip_es")
    protocol = (report or {}).get("protocol", {}).get("description") or m.get("protocol")
    out.append("<h3>Evaluation protocol</h3>")
    out.append(f"<pre>{escape(str(protocol))}</pre>" if protocol else _na("no protocol recorded in metrics.json"))
    out.append("<h3>Per-class IoU (%)</h3>")
    if report is None or not report.get("per_class"):
        out.append(_na("evaluate/seeds_clip_es_<split>.json not found"))
    else:
        rows2 = [[str(r["id"]), _swatch(int(r["id"])) + escape(str(r["class"])),
                  _num(None if r.get("iou") is None else 100.0 * r["iou"]), str(r.get("gt_pixels", "")),
                  "yes" if r.get("in_mean") else "no"] for r in report["per_class"]]
        out.append(_table(["id", "class", "IoU", "GT pixels", "in mIoU"], rows2, [True, False, True, True, False]))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# (3) stage II: segmentation networks trained on the seeds


STAGE2_DIR = "stage2"
STAGE2_COMMAND = "tag2mask train-seg --run {run} --net deeplabv3plus"
PREDICTIONS_PREFIX = "predictions_"
REFINE_ORDER = {"crf": 0, "sams": 1}  # refinements listed after their network: CRF, then SAMS (App. Table S6)
_ITER_SUFFIX = re.compile(r"_iter_(\d+)$")


def _read_json_safe(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(content, "")``; ``(None, "")`` when the file is absent; ``(None, one-line note)`` when it is unreadable."""
    if not path.is_file():
        return None, ""
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        return None, f"{path.name} unreadable ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if not isinstance(data, dict):
        return None, f"{path.name} unreadable (not a JSON object)"
    return data, ""


def _subsection(body: Callable[[], str]) -> str:
    """One piece of a section; an unexpected error becomes a one-line "not available" note in its place."""
    try:
        return body()
    except Exception as e:  # noqa: BLE001 - a report never fails on a malformed file
        return _na(f"{e.__class__.__name__}: {e}")


@dataclass
class _ResultFolder:
    """A prediction folder of a network (``predictions_<split>[_iter_<n>]``) or a refinement of one (``refine.json``)."""

    path: Path
    refine: dict[str, Any] | None = None  # refine.json (None: a prediction folder)
    evaluation: dict[str, Any] | None = None  # evaluation.json
    problems: list[str] = field(default_factory=list)  # one-line notes about unreadable files

    @classmethod
    def read(cls, path: Path) -> _ResultFolder:
        out = cls(path)
        out.refine, why = _read_json_safe(path / "refine.json")
        if why:
            out.refine = {}  # a refinement folder all the same
            out.problems.append(why)
        out.evaluation, why = _read_json_safe(path / "evaluation.json")
        if why:
            out.problems.append(why)
        return out

    @property
    def is_refinement(self) -> bool:
        return self.refine is not None

    @property
    def method(self) -> str:
        return str((self.refine or {}).get("method") or self.path.name.rsplit("_", 1)[-1])

    @property
    def protocol(self) -> dict[str, Any]:
        proto = (self.evaluation or {}).get("protocol")
        return proto if isinstance(proto, dict) else {}

    def split(self) -> str:
        if self.protocol.get("split"):
            return str(self.protocol["split"])
        if self.refine and self.refine.get("split"):
            return str(self.refine["split"])
        name = self.path.name
        if name.startswith(PREDICTIONS_PREFIX) and not self.is_refinement:
            return _ITER_SUFFIX.sub("", name[len(PREDICTIONS_PREFIX):]) or "?"
        return "?"

    def miou(self) -> float | None:
        """The evaluation's mIoU in percent (None without one)."""
        value = (self.evaluation or {}).get("miou")
        if value is None:
            return None
        value = 100.0 * float(value)
        return value if math.isfinite(value) else None

    def images(self) -> str:
        if self.protocol.get("num_images") is not None:
            return str(self.protocol["num_images"])
        if self.refine and self.refine.get("images") is not None:
            return f"{self.refine.get('done', '?')}/{self.refine['images']}"
        pattern = "*.png" if self.is_refinement else "*.npz"
        return f"{sum(1 for _ in self.path.glob(pattern))} files"


def _stage2_folders(net_dir: Path) -> list[tuple[_ResultFolder | None, list[_ResultFolder]]]:
    """The network's prediction folders, each with its refinements (CRF, then SAMS); refinements whose prediction
    folder is not there come last, under ``None``."""
    found = [_ResultFolder.read(p) for p in sorted(net_dir.iterdir()) if p.is_dir()
             and (p.name.startswith(PREDICTIONS_PREFIX) or (p / "refine.json").is_file())]
    predictions = [f for f in found if not f.is_refinement]
    groups: dict[Path, list[_ResultFolder]] = {f.path: [] for f in predictions}
    orphans: list[_ResultFolder] = []
    for f in (f for f in found if f.is_refinement):
        parents = [p for p in predictions if f.path.name.startswith(p.path.name + "_")]
        source = Path(str((f.refine or {}).get("predictions_dir") or "")).name
        parents = parents or [p for p in predictions if p.path.name == source]
        if parents:
            groups[max(parents, key=lambda p: len(p.path.name)).path].append(f)
        else:
            orphans.append(f)

    def order(f: _ResultFolder) -> tuple[int, str]:
        return REFINE_ORDER.get(f.method.lower(), len(REFINE_ORDER)), f.path.name

    out: list[tuple[_ResultFolder | None, list[_ResultFolder]]] = [(p, sorted(groups[p.path], key=order))
                                                                   for p in predictions]
    if orphans:
        out.append((None, sorted(orphans, key=order)))
    return out


def _refine_note(f: _ResultFolder) -> tuple[str, bool]:
    """The note of a refinement row (HTML) and whether its alpha was tuned on ground truth."""
    r = f.refine or {}
    parts: list[str] = []
    tuned_lines = [str(t) for t in (r.get("tuned_on_gt") or [])]
    sweep = r.get("sweep") if isinstance(r.get("sweep"), list) else None
    tuned = bool(tuned_lines or sweep)
    if f.method.lower() == "sams":
        alpha = r.get("alpha")
        parts.append(escape(f"α = {float(alpha):g}" if alpha is not None else "α unknown"))
        if r.get("uncovered") == "argmax":
            parts.append("uncovered pixels keep the network's argmax (SPEC §13 item 16)")
    elif f.method.lower() == "crf":
        parts.append(escape(f"dense CRF, parameters {r.get('crf_params') or '?'}"))
    if tuned:
        flag = escape(f"α tuned on {f.split()} GT (SPEC §13 item 9)")
        cells = []
        for row in sweep or []:
            try:
                m = row.get("miou")
                cells.append(f"α={float(row['alpha']):g}: {_num(None if m is None else 100.0 * float(m))}")
            except (AttributeError, KeyError, TypeError, ValueError):
                continue
        parts.append(f"<b>{flag}</b>" + (f": sweep {escape(', '.join(cells))}" if cells else ""))
        sentence = " ".join(tuned_lines) or str(r.get("alpha_choice") or "") or "not a clean held-out number"
        parts.append(f'<span class="note">{escape(sentence)}</span>')
    elif r.get("alpha_choice"):
        parts.append(escape(str(r["alpha_choice"])))
    status = r.get("status")
    if status and status != "done":
        parts.append(escape(f"incomplete ({status}: {r.get('done', '?')} of {r.get('images', '?')} images)"))
    return "; ".join(p for p in parts if p), tuned


def _stage2_results(net_dir: Path) -> str:
    groups = _stage2_folders(net_dir)
    if not groups:
        return _na(f"no prediction folder in {STAGE2_DIR}/{net_dir.name} yet (tag2mask predict --checkpoint "
                   f"{net_dir} --split val)")
    rows, classes, extra_tuned = [], [], []
    for base, refinements in groups:
        base_miou = base.miou() if base is not None else None
        if base is not None:
            m = _ITER_SUFFIX.search(base.path.name)
            label = f"network alone (checkpoint iter_{m.group(1)})" if m else "network alone (final weights)"
            note = list(base.problems)
            if base.evaluation is None and not base.problems:
                note.append("not evaluated (no evaluation.json: the split has no ground truth, or predict has not "
                            "finished)")
            rows.append([escape(label), f"<code>{escape(base.path.name)}</code>", escape(base.split()),
                         escape(base.images()), _num(base_miou), "", escape("; ".join(note))])
            classes.append("")
        for f in refinements:
            what = {"sams": "+ SAMS refinement", "crf": "+ dense CRF"}.get(f.method.lower(), f"+ {f.method}")
            note, tuned = _refine_note(f)
            problems = list(f.problems)
            if f.evaluation is None and not f.problems:
                problems.append("not evaluated (no evaluation.json)")
            if base is None:
                problems.append("its prediction folder is not in this network's folder")
            note = "; ".join([*([note] if note else []), *(escape(p) for p in problems)])
            miou = f.miou()
            delta = None if miou is None or base_miou is None else miou - base_miou
            rows.append([escape(what), f"<code>{escape(f.path.name)}</code>", escape(f.split()), escape(f.images()),
                         _num(miou), _signed(delta), note])
            classes.append("tuned" if tuned else "")
        for f in ([base] if base is not None else []) + refinements:
            refine_lines = set(str(t) for t in ((f.refine or {}).get("tuned_on_gt") or []))
            for line in f.protocol.get("tuned_on_gt") or []:
                if str(line) not in refine_lines and str(line) not in extra_tuned:
                    extra_tuned.append(str(line))
    out = [_table(["result", "folder", "split", "images", "mIoU (%)", "vs network alone (points)", "note"], rows,
                  [False, False, False, True, True, True, False], classes),
           '<p class="note">mIoU from each folder\'s <code>evaluation.json</code> (tag2mask predict / refine evaluate '
           "when the split has ground truth). The change is in mIoU points over the network alone on the same "
           "predictions. Highlighted rows: a SAMS α chosen by the ground truth of the split it is evaluated on, as "
           "the reference did (SPEC §13 item 9) — not a clean held-out number.</p>"]
    if extra_tuned:
        out.append('<p class="note">Also chosen with ground truth, per the evaluation protocols: '
                   f"{escape('; '.join(extra_tuned))}.</p>")
    return "\n".join(out)


def _stage2_facts(run: _Run, net_dir: Path) -> str:
    name = net_dir.name
    rec = run.stage(f"{STAGE2_DIR}/{name}")
    info, why = _read_json_safe(net_dir / "model.json")
    rows: list[tuple[str, str]] = []
    if info is None:
        rows.append(("model.json", why or "not found (train-seg has not written it yet)"))
        info = {}
    recipe = info.get("recipe") if isinstance(info.get("recipe"), dict) else {}
    if info:
        weights = info.get("backbone_weights")
        classes = info.get("class_names") or []
        labels = str(info.get("labels", "?"))
        rows += [
            ("network", f"{info.get('net', '?')} (folder {STAGE2_DIR}/{name})"),
            ("backbone", str(info.get("backbone", "?"))),
            ("backbone weights", str(weights) if weights else "none (from scratch)"),
            ("classes", f"{info.get('num_classes', len(classes) or '?')} incl. background "
                        f"(dataset {info.get('dataset', '?')})"),
            ("labels", labels + (" (the run's fine seeds)" if Path(labels).name == "seeds_fine" else "")),
            ("training images", f"{info.get('train_images', '?')} ({info.get('train_split', '?')})"),
        ]
    done: Any = ((rec or {}).get("counts") or {}).get("iterations")
    if done is None:
        try:
            from tag2mask.resume import read_meta

            done = (read_meta(net_dir) or {}).get("iteration")
        except Exception:  # noqa: BLE001 - an unreadable state: the metrics below may still tell
            done = None
    if done is None and (net_dir / "metrics.jsonl").is_file():
        points = _read_losses(net_dir / "metrics.jsonl")
        done = int(points[-1][0]) + 1 if points else None
    total = info.get("total_iterations")
    iters = f"{done if done is not None else '?'} of {total if total is not None else '?'}"
    if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
        iters += f" ({100.0 * done / total:.0f} %)"
    rows.append(("iterations", iters))
    if recipe:
        schedule = (f"max_iter {recipe['max_iter']}" if recipe.get("max_iter") else
                    f"{recipe.get('epochs', '?')} epochs")
        rows.append(("batch / crop", f"batch {recipe.get('batch_size', '?')}, crop {recipe.get('crop_size', '?')}, "
                                     f"{schedule}"))
        opt = f"{recipe.get('optimizer', '?')}, lr {recipe.get('lr', '?')}"
        if recipe.get("poly_power") is not None:
            opt += f" (poly {recipe['poly_power']} down to {recipe.get('min_lr', '?')})"
        if recipe.get("weight_decay") is not None:
            opt += f", weight decay {recipe['weight_decay']}"
        rows.append(("optimiser / lr", opt))
    if rec is not None and rec.get("seconds") is not None:
        secs = float(rec["seconds"])
        rows.append(("training time", f"{secs:.1f} s ({_duration(secs)}, from the manifest, summed over resumes)"))
    else:
        rows.append(("training time", f"not in the manifest (no {STAGE2_DIR}/{name} record)"))
    final = net_dir / "model.safetensors"
    n_ckpt = len(list((net_dir / "checkpoints").glob("*.safetensors"))) if (net_dir / "checkpoints").is_dir() else 0
    weights_state = ("final weights model.safetensors written" if final.is_file() else
                     "no final weights yet (training unfinished)")
    rows.append(("status", f"{(rec or {}).get('status', 'not in the manifest')}; {weights_state}; "
                           f"{n_ckpt} checkpoint(s)"))
    return _table(None, [[escape(k), escape(str(v))] for k, v in rows], table_class="kv")


def _stage2_curves(net_dir: Path) -> str:
    name = net_dir.name
    out = []
    # the logs' "iter" is 0-based (the iteration just run): shown as iterations done, like train-seg prints them
    path = net_dir / "metrics.jsonl"
    points = [(x + 1, y) for x, y in _read_losses(path)] if path.is_file() else []
    if not path.is_file():
        out.append(_na(f"{STAGE2_DIR}/{name}/metrics.jsonl not found (training has not logged yet)"))
    elif not points:
        out.append(_na(f"{STAGE2_DIR}/{name}/metrics.jsonl holds no finite loss yet"))
    else:
        shown = _bin_means(points, MAX_CURVE_POINTS)
        note = (f"{len(points)} log lines, each the mean loss of the iterations since the previous one (recipe "
                f"log_every); first {points[0][1]:.4g}, last {points[-1][1]:.4g} (the 'last loss' train-seg prints)")
        if len(shown) < len(points):
            note += f"; {len(shown)} points shown (means of consecutive lines)"
        out.append(f"<figure style=\"max-width:none\">{loss_svg(shown, f'{name}: training loss')}"
                   f"<figcaption>{escape(note)}</figcaption></figure>")
    path = net_dir / "val.jsonl"
    val = [(x + 1, y) for x, y in _read_losses(path, "miou")] if path.is_file() else []
    if not path.is_file():
        out.append(_na(f"{STAGE2_DIR}/{name}/val.jsonl not found (no validation yet, a validation split without "
                       "ground truth, or val_every=0)"))
    elif not val:
        out.append(_na(f"{STAGE2_DIR}/{name}/val.jsonl holds no finite mIoU yet"))
    else:
        best = max(val, key=lambda p: p[1])
        note = (f"{len(val)} validation(s), best {best[1]:.1f} after {best[0]:g} iterations, last {val[-1][1]:.1f} "
                "(on the validation split's ground truth)")
        out.append(f"<figure style=\"max-width:none\">"
                   f"{loss_svg(_bin_means(val, MAX_CURVE_POINTS), f'{name}: validation mIoU (%)')}"
                   f"<figcaption>{escape(note)}</figcaption></figure>")
    return '<div class="row">' + "".join(out) + "</div>"


def _stage2(run: _Run) -> str:
    root = run.path / STAGE2_DIR
    recorded = sorted(k.split("/", 1)[1] for k in run.stages if k.startswith(f"{STAGE2_DIR}/"))
    if not root.is_dir():
        return _na(f"stage II has not run (no {STAGE2_DIR}/ folder in this run); train a segmentation network on "
                   f"the fine seeds with: {STAGE2_COMMAND.format(run=run.path)}")
    nets = sorted(p for p in root.iterdir() if p.is_dir())
    if not nets:
        return _na(f"{STAGE2_DIR}/ holds no network folder yet; train one with: "
                   f"{STAGE2_COMMAND.format(run=run.path)}")
    out = ['<p class="note">Segmentation networks trained on the seeds (SPEC §11, App. G), their predictions and '
           "refinements, like App. Tables S2/S3/S6.</p>"]
    missing = [n for n in recorded if not (root / n).is_dir()]
    if missing:
        out.append(_na(f"in the manifest but without a folder: {', '.join(missing)}"))
    for net_dir in nets:
        out.append(f"<h3>{escape(net_dir.name)}</h3>")
        out.append(_subsection(lambda d=net_dir: _stage2_facts(run, d)))
        out.append(_subsection(lambda d=net_dir: _stage2_results(d)))
        out.append(_subsection(lambda d=net_dir: _stage2_curves(d)))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# (4) efficiency


def learnable_parameters(path: str | Path) -> tuple[int, list[tuple[str, list[int], str]]]:
    """The element count of a safetensors file and its tensors (name, shape, dtype), read from its header only."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length).decode("utf-8"))
    tensors = [(k, [int(d) for d in v["shape"]], str(v["dtype"])) for k, v in header.items() if k != "__metadata__"]
    return sum(math.prod(shape) for _, shape, _ in tensors), tensors


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _context_file(run: _Run, task: str) -> Path:
    from tag2mask.stages.common import context_path

    checkpoint: Any = "final"
    if run.config is not None:
        checkpoint = getattr(run.config.train, task).checkpoint
    chosen = context_path(run.path, task, checkpoint)
    return chosen if chosen.is_file() else run.path / f"train_{task}" / "ctx_final.safetensors"


def _efficiency(run: _Run) -> str:
    out = ["<h3>Time per stage</h3>"]
    if not run.stages:
        out.append(_na("manifest.json has no stage yet (nothing has run)"))
    rows, classes = [], []
    total, n_done = 0.0, 0
    images = None

    def row(name: str, what: str) -> list[str]:
        nonlocal images
        rec = run.stage(name)
        if rec is None:
            return [f"<code>{name}</code>", escape(what), "not run yet", "—", "—", "—", "—"]
        counts = rec.get("counts") or {}
        secs = float(rec.get("seconds") or 0.0)
        n_img = counts.get("images")
        images = images or n_img
        per = f"{secs / n_img:.3f}" if n_img else "—"
        return [f"<code>{name}</code>", escape(what), escape(str(rec.get("status", "?"))),
                escape(", ".join(f"{k} {v}" for k, v in counts.items()) or "—"), f"{secs:.1f}", _duration(secs), per]

    for name, what in METHOD_STAGES:
        rows.append(row(name, what))
        classes.append("")
        rec = run.stage(name)
        if rec is not None:
            total += float(rec.get("seconds") or 0.0)
            n_done += rec.get("status") == "done"
    rows.append(["<b>total</b>", f"the method ({n_done} of {len(METHOD_STAGES)} stages done), without "
                 "quasi-superpixels", "", "", f"{total:.1f}", _duration(total), "—"])
    classes.append("total")
    sp_name, sp_what = SUPERPIXEL_STAGE
    rows.append(row(sp_name, sp_what))
    classes.append("")
    sp_rec = run.stage(sp_name)
    sp_secs = float((sp_rec or {}).get("seconds") or 0.0)
    rows.append(["<b>total incl. quasi-superpixels</b>", "", "", "", f"{total + sp_secs:.1f}",
                 _duration(total + sp_secs), "—"])
    classes.append("total")
    out.append(_table(["stage", "what", "status", "items", "time (s)", "h:mm:ss", "s / image"], rows,
                      [False, False, False, False, True, True, True], classes))
    out.append('<p class="note">Times are the manifest\'s <code>seconds</code>, summed over resumes. As in the '
               "paper (App. Table S1), quasi-superpixel generation is listed apart and left out of the method's "
               "total: it is computed once per dataset and cached.</p>")

    out.append("<h3>Learnable parameters</h3>")
    prow, grand, missing = [], 0, []
    for task in TASKS:
        path = _context_file(run, task)
        if not path.is_file():
            missing.append(f"{path.relative_to(run.path)} (prompt training of the {task} task has not finished)")
            continue
        n, tensors = learnable_parameters(path)
        grand += n
        shapes = ", ".join(f"{k} {'×'.join(map(str, s))} {d}" for k, s, d in tensors)
        prow.append([escape(task), escape(str(path.relative_to(run.path))), escape(shapes), f"{n:,}",
                     f"{n * 4 / 1e6:.3f}", f"{n * 2 / 1e6:.3f}"])
    pclasses = [""] * len(prow)
    if prow:
        prow.append(["<b>total</b>", "", "", f"{grand:,}", f"{grand * 4 / 1e6:.3f}", f"{grand * 2 / 1e6:.3f}"])
        pclasses.append("total")
        out.append(_table(["task", "file", "tensors", "parameters", "MB (fp32)", "MB (fp16)"], prow,
                          [False, False, False, True, True, True], pclasses))
        out.append('<p class="note">Only the prompt contexts are learned; CLIP and SAM stay frozen. '
                   "1 MB = 10<sup>6</sup> bytes.</p>")
    out += [_na(m) for m in missing]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# (5) figures


@dataclass
class _Panel:
    caption: str  # HTML
    rgb: np.ndarray | None = None
    missing: str = ""  # "not available" text when rgb is None
    colour_bar: str = ""  # HTML shown under the image (heat maps: what the colours mean)

    def html(self) -> str:
        if self.rgb is None:
            return (f'<figure class="missing"><figcaption>{self.caption}</figcaption>'
                    f"{_na(self.missing)}</figure>")
        h, w = self.rgb.shape[:2]
        k = display_factor(w)
        alt = escape(_strip_tags(self.caption), quote=True)
        uri = fig.png_data_uri(self.rgb, PHOTO_COLOURS)
        return (f'<figure><img src="{uri}" width="{k * w}" height="{k * h}" alt="{alt}">{self.colour_bar}'
                f"<figcaption>{self.caption}</figcaption></figure>")


def display_factor(width: int) -> int:
    """The integer enlargement that shows a ``width``-px figure at least :data:`DISPLAY_WIDTH` px wide (1 when it
    already is); the browser enlarges it nearest-neighbour (``image-rendering: pixelated``), so label maps stay
    crisp and the page stays small."""
    return max(1, -(-DISPLAY_WIDTH // max(1, int(width))))


def _colour_bar(low: str, high: str, what: str, no_value: bool = False) -> str:
    """A heat-colour legend: the gradient from ``low`` to ``high`` with what the values are."""
    grey = ""
    if no_value:
        grey = f" {_rgb_swatch(fig.NO_VALUE_RGB)}no superpixel"
    return (f'<div class="cbar" style="background:{fig.heat_css_gradient()}"></div>'
            f'<div class="cbar-labels"><span>{escape(low)}</span><span>{escape(what)}{grey}</span>'
            f"<span>{escape(high)}</span></div>")


def _strip_tags(text: str) -> str:
    out, inside = [], False
    for ch in text:
        if ch == "<":
            inside = True
        elif ch == ">":
            inside = False
        elif not inside:
            out.append(ch)
    return "".join(out)


def _row(panels: Sequence[_Panel]) -> str:
    return '<div class="row">' + "".join(p.html() for p in panels) + "</div>"


def _read_cam(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    from tag2mask.stages.cams import load_cam_file

    return load_cam_file(path)


TRAINING_FREE_DIR = "training-free"
"""Where ``tag2mask demo --training-free`` puts its run inside the trained demo's folder."""


def _cam_sources(run: _Run) -> list[tuple[str, str, Path]]:
    """The CAM folders a run's figures show, as (key, caption, folder): the trained tasks' for a trained run, the
    training-free CAMs of a training-free run, and those of a training-free run beside a trained one (the demo's
    ``training-free/``), so that the two can be compared image by image."""
    training_free = run.config is not None and getattr(run.config, "pipeline", "fma") == "clip_es"
    sources = [] if training_free else [(task, f"{task} CAM", run.path / f"cams_{task}") for task in TASKS]
    for folder in (run.path / "cams_clip_es", run.path / TRAINING_FREE_DIR / "cams_clip_es"):
        if folder.is_dir():
            sources.append(("clip_es", "training-free CAM (CLIP-ES)", folder))
            break
    return sources


def _load_seed(run: _Run, name: str, image_id: str) -> np.ndarray | None:
    path = run.path / name / f"{image_id}.png"
    if not path.is_file():
        return None
    from tag2mask.io import read_label_png

    return read_label_png(path)


@dataclass
class _SuperpixelArrays:
    """One image's quasi-superpixels as the report needs them: levels and the exact atom decomposition
    (``masks[k] == membership[atoms, k]``), as :meth:`tag2mask.superpixels.Superpixels.save` stores them."""

    levels: np.ndarray  # S int64
    atoms: np.ndarray  # H×W int32
    membership: np.ndarray  # A×S bool
    atom_area: np.ndarray  # A int64

    def __len__(self) -> int:
        return int(self.levels.shape[0])

    def masks_at(self, size: tuple[int, int]) -> np.ndarray:
        """The ``S×h×w`` bool masks at ``size`` (nearest-neighbour sampling of the atom map)."""
        small = fig.resize_nearest(self.atoms, size)
        return np.ascontiguousarray(np.moveaxis(self.membership[small], -1, 0))


def load_superpixel_arrays(stem: str | Path) -> _SuperpixelArrays:
    """Read ``<stem>.npz`` written by :meth:`Superpixels.save` without decoding its RLEs (and without importing
    :mod:`tag2mask.superpixels`, which pulls in segment_anything); falls back to :meth:`Superpixels.load` when the
    file lacks the atom arrays."""
    from tag2mask.io import load_npz

    try:
        a = load_npz(f"{stem}.npz")
        out = _SuperpixelArrays(np.asarray(a["levels"], np.int64).reshape(-1), np.asarray(a["atoms"], np.int32),
                                np.asarray(a["atom_membership"], bool), np.asarray(a["atom_area"], np.int64))
        if out.membership.shape != (out.atom_area.shape[0], len(out)) or out.atoms.ndim != 2:
            raise ValueError("atom arrays do not fit")
        return out
    except (KeyError, ValueError, OSError):
        from tag2mask.superpixels import Superpixels

        sp = Superpixels.load(stem)
        return _SuperpixelArrays(np.asarray(sp.levels, np.int64), np.asarray(sp.atoms, np.int32),
                                 np.asarray(sp.atom_membership, bool), np.asarray(sp.atom_area, np.int64))


def _top_class(fg: np.ndarray, seeds: Sequence[np.ndarray | None]) -> int:
    """Index into ``fg`` of the positive class with the most pixels in the first available seed (else 0)."""
    for seed in seeds:
        if seed is not None and len(fg):
            counts = [int((seed == int(c) + 1).sum()) for c in fg]
            return int(np.argmax(counts))
    return 0


def _score_map(run: _Run, task: str, cam: dict[str, np.ndarray], j: int, sp: _SuperpixelArrays,
               masks_small: np.ndarray) -> tuple[np.ndarray, str]:
    """The SAMS score of positive class ``j`` painted per superpixel (display size), and how it was computed."""
    settings = getattr(run.config.seeds, "fine" if task == "seg" else "coarse")
    try:
        from tag2mask.seeding import SeedingIndex, sams_scores

        index = SeedingIndex(atom_map=sp.atoms, membership=sp.membership, atom_area=sp.atom_area, levels=sp.levels)
        sc = sams_scores(cam["cam"], cam["fg_cls"], None, None, settings.bg_power, norm_first=settings.norm_first,
                         gather=settings.gather, bg_method=settings.bg_method, precomputed=index)
        values = np.asarray(sc.scores)[:, 1 + j]
        return fig.paint_superpixels(masks_small, values, np.asarray(sc.paint_order)), "SAMS score"
    except Exception:  # noqa: BLE001 - e.g. an option SAMS scores cannot show; fall back to the plain mean
        cam01 = fig.resize_bilinear(fig.minmax01(cam["cam"][j]), masks_small.shape[1:])
        values = fig.superpixel_means(cam01, masks_small)
        order = np.argsort(np.asarray(sp.levels), kind="stable")
        return fig.paint_superpixels(masks_small, values, order), "mean of the min-max-normalised CAM"


def _image_figures(run: _Run, dataset: Any, image_id: str, sp_folder: Path | None, role: str = "",
                   per_image: dict[str, dict[str, float | None]] | None = None) -> str:
    sample = dataset[image_id]
    names = list(dataset.class_names)
    image = dataset.load_image(image_id)
    size = image.shape[:2]
    small = fig.display_size(size, DISPLAY_WIDTH)
    disp = fig.resize_rgb(image, small)
    dim = fig.blend(disp, np.zeros(3), 0.45)
    tags = " ".join(_swatch(c + 1) + escape(names[c]) for c in sample.labels) or "no tags"
    heading = escape(image_id) + (f" — {escape(role)}" if role else "")
    out = [f'<div class="imgblock"><h3>{heading}</h3>']

    # image and ground truth
    panels = [_Panel(f"image {size[1]}×{size[0]} — tags: {tags}", disp)]
    gt = dataset.load_mask(image_id) if dataset.has_masks else None
    if gt is not None:
        panels.append(_Panel("ground truth", fig.overlay(disp, fig.resize_nearest(gt, small), LABEL_ALPHA)))
    else:
        panels.append(_Panel("ground truth", missing="this split has no ground-truth masks"))
    out.append(_row(panels))

    # cls vs seg CAMs (and the training-free ones when there are), per positive class
    sources = _cam_sources(run)
    shown = {key: _read_cam(folder / f"{image_id}.npz") for key, _, folder in sources}
    cams = {task: shown.get(task) for task in TASKS}  # each file read once
    panels = []
    for c in sample.labels:
        for key, what, folder in sources:
            cam = shown[key]
            caption = f"{what}: {_swatch(c + 1)}{escape(names[c])}"
            if cam is None:
                panels.append(_Panel(caption, missing=f"{folder.name}/{image_id}.npz (stage {folder.name} not run)"))
                continue
            where = np.flatnonzero(cam["fg_cls"] == c)
            if where.size == 0:
                panels.append(_Panel(caption, missing="no CAM for this class in the file"))
                continue
            heat = fig.heatmap(fig.resize_bilinear(fig.minmax01(cam["cam"][where[0]]), small))
            panels.append(_Panel(caption, fig.blend(disp, heat, 0.55),
                                 colour_bar=_colour_bar("0", "1", "CAM, min-max normalised")))
    if panels:
        order = ", ".join(what for _, what, _ in sources)
        out.append('<p class="note">CAMs as the seeds read them (after CAA when enabled), clamped at 0, min-max '
                   f"normalised, upsampled bilinearly to the image; in each row: {escape(order)}.</p>" + _row(panels))

    # superpixels, score map, seeds, CRF
    seeds = {name: _load_seed(run, name, image_id) for name in ("seeds_coarse", "seeds_fine")}
    panels = []
    sp = None
    if sp_folder is None:
        panels.append(_Panel("quasi-superpixels", missing="no superpixel folder (stage superpixels not run)"))
    elif not Path(str(sp_folder / image_id) + ".json").is_file():
        panels.append(_Panel("quasi-superpixels", missing=f"{sp_folder / image_id}.json not found"))
    else:
        sp = load_superpixel_arrays(sp_folder / image_id)
    if sp is not None:
        masks_small = sp.masks_at(small)
        counts = np.bincount(np.clip(sp.levels, 0, 2), minlength=3)
        legend = ", ".join(f"{_rgb_swatch(fig.LEVEL_RGB[k])}{n} {w}" for k, (n, w) in
                           enumerate(zip(counts, ("subpart", "part", "whole"))))
        single = "" if len(set(np.asarray(sp.levels).tolist())) > 1 else (
            " — one level only: this source gave no subpart/part/whole hierarchy, so the hierarchy filter had "
            "nothing to order and SAMS paints every mask in one pass")
        panels.append(_Panel(f"quasi-superpixels: {len(sp)} masks ({legend}){escape(single)}",
                             fig.mask_outlines(masks_small, sp.levels, dim)))
        task = "seg" if cams["seg"] is not None else "cls"
        cam = cams[task]
        if cam is not None and len(cam["fg_cls"]) and run.config is not None:
            j = _top_class(cam["fg_cls"], [seeds["seeds_fine"], seeds["seeds_coarse"]])
            c = int(cam["fg_cls"][j])
            values, how = _score_map(run, task, cam, j, sp, masks_small)
            panels.append(_Panel(f"superpixel score map, {task} CAMs, top class {_swatch(c + 1)}{escape(names[c])}"
                                 f" ({escape(how)})",
                                 fig.blend(disp, fig.heatmap(values), 0.8),
                                 colour_bar=_colour_bar("0", "1", how, no_value=True)))
        else:
            panels.append(_Panel("superpixel score map", missing="no CAM file for this image yet"))
    seed_rows = (("seeds_coarse", "coarse", "cls"), ("seeds_fine", "fine", "seg"))
    if not any(key in ("cls", "seg") for key, _, _ in sources):  # a training-free run: its own seeds
        seed_rows = (("seeds_clip_es", "coarse", "training-free"),)
        seeds["seeds_clip_es"] = _load_seed(run, "seeds_clip_es", image_id)
    for name, which, task in seed_rows:
        method = getattr(run.config.seeds, which).method.upper() if run.config is not None else "SAMS"
        label = f"{'training-free' if task == 'training-free' else which} {method} seed ({task} CAMs)"
        seed = seeds[name]
        value = ((per_image or {}).get(name) or {}).get(image_id)
        if value is not None:
            label += f", mIoU {100 * value:.1f} on this image"
        if seed is None:
            panels.append(_Panel(label, missing=f"{name}/{image_id}.png (stage {name} not run)"))
        else:
            panels.append(_Panel(label, fig.overlay(disp, fig.resize_nearest(seed, small), LABEL_ALPHA)))
    panels.append(_crf_panel(run, image, cams["seg"] if cams["seg"] is not None else cams["cls"], small, disp))
    out.append(_row(panels))
    out.append("</div>")
    return "\n".join(out)


def _crf_available() -> bool:
    """True when the optional dense-CRF backend (``pydensecrf``, extra ``crf``) can be imported."""
    return importlib.util.find_spec("pydensecrf") is not None


def _crf_panel(run: _Run, image: np.ndarray, cam: dict[str, np.ndarray] | None, small: tuple[int, int],
               disp: np.ndarray) -> _Panel:
    caption = "dense-CRF seed"
    if not _crf_available():
        return _Panel(caption, missing=CRF_MISSING)
    if cam is None or run.config is None:
        return _Panel(caption, missing="no CAM file for this image yet")
    settings = run.config.seeds.fine
    try:
        from tag2mask.seeding.crf import crf_seed

        seed = crf_seed(image, cam["cam"], cam["fg_cls"], bg_power=settings.bg_power, params=settings.crf)
    except Exception as e:  # noqa: BLE001
        return _Panel(caption, missing=f"{e.__class__.__name__}: {e}")
    return _Panel(f"{caption} (same CAMs, {escape(settings.crf)}, p={settings.bg_power:g})",
                  fig.overlay(disp, fig.resize_nearest(np.asarray(seed), small), LABEL_ALPHA))


def _per_image_miou(run: _Run, name: str) -> dict[str, float | None]:
    """``{image id: mIoU (0..1)}`` of a seed folder, as its evaluation report recorded it (empty when absent)."""
    report = _eval_report(run, name) or {}
    values = report.get("per_image_miou")
    return values if isinstance(values, dict) else {}


def pick_examples(ids: Sequence[str], miou: dict[str, float | None], n: int) -> tuple[list[tuple[str, str]], str]:
    """``n`` example images as ``(id, role)`` and a sentence saying how they were chosen.

    With per-image seed mIoU (``miou``, 0..1): the best, the median and the worst image (one image: the median),
    more at evenly spaced ranks when ``n`` > 3, each labelled with its rank and value, best first. Without: the
    first ``n`` of ``ids``.
    """
    scored = sorted(((v, i) for i in ids if isinstance(v := miou.get(i), (int, float)) and math.isfinite(v)),
                    key=lambda p: (-p[0], p[1]))
    if not scored or n <= 0:
        return [(i, "") for i in list(ids)[: max(n, 0)]], f"The first {min(n, len(ids))} images with at least one tag"
    last, m = len(scored) - 1, min(n, len(scored))
    median = last // 2
    if m == 1:
        chosen = [median]
    else:  # evenly spaced ranks from the best to the worst, the one nearest the median moved onto it
        chosen = sorted({round(k * last / (m - 1)) for k in range(m)})
        if m >= 3 and median not in chosen:
            nearest = min(chosen[1:-1], key=lambda r: abs(r - median))
            chosen = sorted({*chosen, median} - {nearest})
    names = {0: "best", last: "worst"}
    if m != 2:  # two examples: the best and the worst
        names[median] = "median"
    out = []
    for r in chosen:
        value, image_id = scored[r]
        role = names.get(r, f"rank {r + 1}")
        out.append((image_id, f"{role} of {len(scored)} by fine-seed mIoU ({100 * value:.1f})"))
    return out, (f"Typical examples: the best, median and worst of the {len(scored)} images by their fine seed's "
                 "mIoU on that image (then more at evenly spaced ranks)")


def _figures(run: _Run, n_images: int) -> str:
    if n_images <= 0:
        return '<p class="note">no figures requested (n_images=0).</p>'
    if run.config is None:
        return _na(f"figures need the run's config ({run.config_error})")
    from tag2mask.stages.common import open_split

    split = run.config.data.train_split
    root = Path(run.config.data.root).expanduser()
    if not root.exists():
        return _na(f"dataset {root} not found")
    if run.config.data.dataset == "synthetic":
        from tag2mask.data.synthetic import is_synthetic_dataset

        if not is_synthetic_dataset(root):  # opening it would generate a new one: a report only reads
            return _na(f"dataset {root}: no complete synthetic dataset there")
    try:
        dataset = open_split(run.config, split)
    except Exception as e:  # noqa: BLE001
        return _na(f"dataset {run.config.data.root} split {split} could not be opened ({e.__class__.__name__}: {e})")
    tagged = [s.id for s in dataset if s.labels]
    if not tagged:
        return _na(f"split {split} has no image with a tag")
    per_image = {name: _per_image_miou(run, name) for name in ("seeds_coarse", "seeds_fine")}
    examples, how = pick_examples(tagged, per_image["seeds_fine"], n_images)
    folder = run.superpixels_folder()
    if folder is not None and not folder.is_dir():
        folder = None
    level_legend = ", ".join(f"{_rgb_swatch(rgb)}{w}" for rgb, w in zip(fig.LEVEL_RGB, ("subpart", "part", "whole")))
    out = [f'<p class="note">{escape(how)}; shown at least {DISPLAY_WIDTH} px wide (small images enlarged, '
           f"nearest-neighbour). Superpixel outlines by level: {level_legend}. Label colours: the VOC palette, as a "
           "translucent fill with a solid outline and a dark line just outside each region.</p>"]
    if folder is None:
        out.append(_na("quasi-superpixel folder (the superpixels stage has not run)"))
    for image_id, role in examples:
        try:
            out.append(_image_figures(run, dataset, image_id, folder, role, per_image))
        except Exception as e:  # noqa: BLE001
            out.append(f"<h3>{escape(image_id)}</h3>" + _na(f"{e.__class__.__name__}: {e}"))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# (6) training curves


def _read_losses(path: Path, key: str = "loss") -> list[tuple[float, float]]:
    """The finite ``(iter, <key>)`` points of a JSON-lines log; unreadable lines are skipped."""
    points = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            x, y = float(rec["iter"]), float(rec[key])
        except (ValueError, KeyError, TypeError, IndexError):
            continue
        if math.isfinite(x) and math.isfinite(y):
            points.append((x, y))
    return points


def _bin_means(points: list[tuple[float, float]], n_max: int) -> list[tuple[float, float]]:
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


def _curves(run: _Run) -> str:
    out = []
    for task in TASKS:
        path = run.path / f"train_{task}" / "metrics.jsonl"
        if not path.is_file():
            out.append(_na(f"train_{task}/metrics.jsonl (prompt training of the {task} task has not run)"))
            continue
        points = _read_losses(path)
        if not points:
            out.append(_na(f"train_{task}/metrics.jsonl holds no finite loss yet"))
            continue
        shown = _bin_means(points, MAX_CURVE_POINTS)
        loss_name = getattr(run.config.train, task).loss if run.config is not None else "loss"
        note = f"{len(points)} iterations, first loss {points[0][1]:.4g}, last {points[-1][1]:.4g}"
        if len(shown) < len(points):
            note += f"; {len(shown)} points shown (means of consecutive iterations)"
        note += _loss_meaning(loss_name, rises=points[-1][1] > points[0][1])
        out.append(f"<figure style=\"max-width:none\">{loss_svg(shown, f'{task} task: {loss_name} loss')}"
                   f"<figcaption>{escape(note)}</figcaption></figure>")
    return '<div class="row">' + "".join(out) + "</div>"


# ---------------------------------------------------------------------------------------------------------------
# the page


def build_report(run_dir: str | Path, n_images: int = 4) -> str:
    """The HTML text of the report of ``run_dir`` (see the module docstring for its sections)."""
    from tag2mask.errors import Tag2MaskError

    path = Path(run_dir)
    if not path.is_dir():
        raise Tag2MaskError(f"{path} is not a run folder (no such directory)")
    run = _read_run(path)
    title = f"tag2mask run report — {path.resolve().name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        '<p class="note">FMA-WSSS: image tags → CAMs → SAM quasi-superpixel seeding → seeds. '
        "A static page: everything is embedded.</p>",
        *(f'<p class="warn">{escape(w)}</p>' for w in run.manifest.get("warnings", []) or [] if isinstance(w, str)),
        _guarded("Run", lambda: _header(run)),
        _guarded("Seed quality", lambda: _seed_quality(run)),
        _guarded("Stage II: segmentation networks", lambda: _stage2(run)),
        _guarded("Efficiency", lambda: _efficiency(run)),
        _guarded("Figures", lambda: _figures(run, n_images)),
        _guarded("Training curves", lambda: _curves(run)),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(run_dir: str | Path, out: str | Path | None = None, n_images: int = 4) -> Path:
    """Write the self-contained HTML report of the run folder ``run_dir`` (atomically) and return its path.

    ``out`` defaults to ``RUN/report.html``; ``n_images`` is the number of images with figures.
    """
    target = Path(out) if out is not None else Path(run_dir) / DEFAULT_NAME
    write_text(target, build_report(run_dir, n_images))
    return target
