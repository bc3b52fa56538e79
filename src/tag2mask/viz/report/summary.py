"""Report sections (1) header, (2) seed quality and (4) efficiency."""

from __future__ import annotations

import datetime as _dt
from html import escape
from typing import Any


from tag2mask.io import read_json
from tag2mask.viz.report.html import duration, na, num, signed, swatch, table
from tag2mask.viz.report.run import RunView, TASKS, context_file, eval_report, learnable_parameters


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


def _superpixel_source(run: RunView) -> str:
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
    from tag2mask.stages.superpixels import CPU_SOURCES

    if sp.source in CPU_SOURCES:
        return f"CPU method {sp.source} (no SAM), generator pattern {sp.preset}"
    from tag2mask.models.weights import HF_MASK_SOURCES, mask_source_weights

    grid = f"generator pattern {sp.preset}, {sp.points_per_side} points per side, {sp.crop_n_layers} crop layer(s)"
    weights = mask_source_weights(sp.source, config.models.sam)
    if weights is not None:
        return f"{HF_MASK_SOURCES[sp.source][0]} through transformers (weights {weights}), {grid}"
    return f"SAM {config.models.sam_type} (weights {config.models.sam}), {grid}"


def _image_count(run: RunView) -> str:
    if run.metrics and "images" in run.metrics:
        return f"{run.metrics['images']} (evaluated)"
    for name in ("superpixels", "seeds_fine", "seeds_coarse", "cams_cls"):
        rec = run.stage(name)
        if rec and isinstance(rec.get("counts"), dict) and "images" in rec["counts"]:
            return f"{rec['counts']['images']} (from the {name} stage)"
    return "unknown"


def header_section(run: RunView) -> str:
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
            ("CLIP", c.models.clip + (f" (OpenCLIP {c.models.clip_arch})" if c.models.clip_arch else "")),
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
    out = table(None, [[escape(k), escape(str(v))] for k, v in rows], table_class="kv")
    if skipped:
        items = "".join(f"<li><code>{escape(str(e[0]))}</code>: {escape(str(e[1]))}</li>" for e in skipped
                        if isinstance(e, list) and len(e) == 2)
        out += f'<details open><summary>Samples left out, with the reason</summary><ul>{items}</ul></details>'
    return out


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


def seed_quality_section(run: RunView) -> str:
    m = run.metrics
    if not m:
        why = "metrics.json not found (the evaluate step has not run yet, or the split has no ground truth)"
        return na(why)
    if m.get("pipeline") == "clip_es":
        return seed_quality_training_free(run)
    fine = m.get("seeds_fine")
    c = run.config
    rows: list[tuple[str, Any, str]] = [("all background", m.get("all_background"), "the floor any seed must beat")]
    for task in TASKS:
        a = m.get(f"argmax_{task}")
        if isinstance(a, dict):
            sweep = ", ".join(f"p={float(p):g}: {num(v)}" for p, v in (a.get("sweep") or {}).items())
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
        body_rows.append([escape(label), num(value), "" if is_fine else signed(delta), escape(note)])
        classes.append("best" if is_fine else "")
    out = [f"<p>Seed mIoU (%) on <b>{escape(str(m.get('split', '?')))}</b> "
           f"({escape(str(m.get('images', '?')))} images).</p>",
           table(["seeds", "mIoU (%)", "fine − this (points)", "how"], body_rows, [False, True, True, False],
                  classes)]
    summary = []
    for task in TASKS:
        a = m.get(f"argmax_{task}")
        if fine is not None and isinstance(a, dict) and a.get("miou") is not None:
            summary.append(f"{signed(float(fine) - float(a['miou']))} points over the argmax seeds of the {task} CAMs "
                           f"(p={float(a.get('bg_power', float('nan'))):g}, tuned on ground truth)")
    if fine is not None and m.get("all_background") is not None:
        summary.append(f"{signed(float(fine) - float(m['all_background']))} points over all-background")
    if summary:
        out.append(f"<p>The fine seeds score {escape('; '.join(summary))}.</p>")
    fine_report = eval_report(run, "seeds_fine")
    coarse_report = eval_report(run, "seeds_coarse")
    protocol = (fine_report or {}).get("protocol", {}).get("description") or m.get("protocol")
    out.append("<h3>Evaluation protocol</h3>")
    if protocol:
        tuned = (fine_report or {}).get("protocol", {}).get("tuned_on_gt")
        out.append(f"<pre>{escape(chr(10).join(_protocol_lines(str(protocol), tuned, m)))}</pre>")
    else:
        out.append(na("no protocol recorded in metrics.json"))
    out.append("<h3>Per-class IoU (%)</h3>")
    if fine_report is None or not fine_report.get("per_class"):
        out.append(na("evaluate/seeds_fine_<split>.json not found"))
    else:
        coarse_iou = {r["id"]: r.get("iou") for r in (coarse_report or {}).get("per_class", [])}
        rows2 = []
        for r in fine_report["per_class"]:
            iou = r.get("iou")
            rows2.append([
                str(r["id"]), swatch(int(r["id"])) + escape(str(r["class"])),
                num(None if coarse_iou.get(r["id"]) is None else 100.0 * coarse_iou[r["id"]]) if coarse_report
                else "n/a",
                num(None if iou is None else 100.0 * iou),
                str(r.get("gt_pixels", "")), "yes" if r.get("in_mean") else "no",
            ])
        out.append(table(["id", "class", "coarse IoU", "fine IoU", "GT pixels", "in mIoU"], rows2,
                          [True, False, True, True, True, False]))
        out.append('<p class="note">mIoU = mean IoU over the classes present in the ground truth, background '
                   "included. Classes absent from both ground truth and seeds show n/a.</p>")
    return "\n".join(out)


def seed_quality_training_free(run: RunView) -> str:
    """Seed quality of a training-free run (``pipeline: clip_es``): its seeds, CLIP-ES's argmax seeds and the
    all-background floor, with the protocol and the per-class IoU."""
    m = run.metrics
    a = m.get("argmax_clip_es") or {}
    sweep = ", ".join(f"alpha={float(p):g}: {num(v)}" for p, v in (a.get("sweep") or {}).items())
    method = str(m.get("seed_method", "sams"))
    rows = [
        ["all background", num(m.get("all_background")), "the floor any seed must beat"],
        ["CLIP-ES argmax seeds", num(a.get("miou")), escape(f"best alpha={float(a.get('bg_power', float('nan'))):g}, "
                                                             f"tuned on ground truth ({a.get('tuned_on_ground_truth', '')}); "
                                                             f"sweep {sweep}")],
        [escape(f"training-free seeds ({method})"), num(m.get("seeds_clip_es")),
         escape(f"seeds.coarse.method={method} on CLIP-ES's CAMs (no prompt training)")],
    ]
    out = [f"<p>Training-free seed mIoU (%) on <b>{escape(str(m.get('split', '?')))}</b> "
           f"({escape(str(m.get('images', '?')))} images): CLIP-ES's fixed prompts, no prompt training.</p>",
           table(["seeds", "mIoU (%)", "how"], rows, [False, True, False], ["", "", "best"])]
    report = eval_report(run, "seeds_clip_es")
    protocol = (report or {}).get("protocol", {}).get("description") or m.get("protocol")
    out.append("<h3>Evaluation protocol</h3>")
    out.append(f"<pre>{escape(str(protocol))}</pre>" if protocol else na("no protocol recorded in metrics.json"))
    out.append("<h3>Per-class IoU (%)</h3>")
    if report is None or not report.get("per_class"):
        out.append(na("evaluate/seeds_clip_es_<split>.json not found"))
    else:
        rows2 = [[str(r["id"]), swatch(int(r["id"])) + escape(str(r["class"])),
                  num(None if r.get("iou") is None else 100.0 * r["iou"]), str(r.get("gt_pixels", "")),
                  "yes" if r.get("in_mean") else "no"] for r in report["per_class"]]
        out.append(table(["id", "class", "IoU", "GT pixels", "in mIoU"], rows2, [True, False, True, True, False]))
    return "\n".join(out)


def efficiency_section(run: RunView) -> str:
    out = ["<h3>Time per stage</h3>"]
    if not run.stages:
        out.append(na("manifest.json has no stage yet (nothing has run)"))
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
                escape(", ".join(f"{k} {v}" for k, v in counts.items()) or "—"), f"{secs:.1f}", duration(secs), per]

    for name, what in METHOD_STAGES:
        rows.append(row(name, what))
        classes.append("")
        rec = run.stage(name)
        if rec is not None:
            total += float(rec.get("seconds") or 0.0)
            n_done += rec.get("status") == "done"
    rows.append(["<b>total</b>", f"the method ({n_done} of {len(METHOD_STAGES)} stages done), without "
                 "quasi-superpixels", "", "", f"{total:.1f}", duration(total), "—"])
    classes.append("total")
    sp_name, sp_what = SUPERPIXEL_STAGE
    rows.append(row(sp_name, sp_what))
    classes.append("")
    sp_rec = run.stage(sp_name)
    sp_secs = float((sp_rec or {}).get("seconds") or 0.0)
    rows.append(["<b>total incl. quasi-superpixels</b>", "", "", "", f"{total + sp_secs:.1f}",
                 duration(total + sp_secs), "—"])
    classes.append("total")
    out.append(table(["stage", "what", "status", "items", "time (s)", "h:mm:ss", "s / image"], rows,
                      [False, False, False, False, True, True, True], classes))
    out.append('<p class="note">Times are the manifest\'s <code>seconds</code>, summed over resumes. As in the '
               "paper (App. Table S1), quasi-superpixel generation is listed apart and left out of the method's "
               "total: it is computed once per dataset and cached.</p>")

    out.append("<h3>Learnable parameters</h3>")
    prow, grand, missing = [], 0, []
    for task in TASKS:
        path = context_file(run, task)
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
        out.append(table(["task", "file", "tensors", "parameters", "MB (fp32)", "MB (fp16)"], prow,
                          [False, False, False, True, True, True], pclasses))
        out.append('<p class="note">Only the prompt contexts are learned; CLIP and SAM stay frozen. '
                   "1 MB = 10<sup>6</sup> bytes.</p>")
    out += [na(m) for m in missing]
    return "\n".join(out)
