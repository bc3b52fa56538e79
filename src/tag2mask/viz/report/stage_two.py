"""Report section (3): the segmentation networks trained on the seeds (``RUN/stage2/<name>``), their results like
App. Tables S2/S3/S6 and their curves."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any


from tag2mask.viz.report.curves import MAX_CURVE_POINTS, bin_means, loss_svg
from tag2mask.viz.report.html import duration, na, num, signed, subsection, table
from tag2mask.viz.report.run import RunView, read_json_safe, read_losses


STAGE2_DIR = "stage2"


STAGE2_COMMAND = "tag2mask train-seg --run {run} --net deeplabv3plus"


PREDICTIONS_PREFIX = "predictions_"


REFINE_ORDER = {"crf": 0, "sams": 1}  # refinements listed after their network: CRF, then SAMS (App. Table S6)


_ITER_SUFFIX = re.compile(r"_iter_(\d+)$")


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
        out.refine, why = read_json_safe(path / "refine.json")
        if why:
            out.refine = {}  # a refinement folder all the same
            out.problems.append(why)
        out.evaluation, why = read_json_safe(path / "evaluation.json")
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
                cells.append(f"α={float(row['alpha']):g}: {num(None if m is None else 100.0 * float(m))}")
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
        return na(f"no prediction folder in {STAGE2_DIR}/{net_dir.name} yet (tag2mask predict --checkpoint "
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
                         escape(base.images()), num(base_miou), "", escape("; ".join(note))])
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
                         num(miou), signed(delta), note])
            classes.append("tuned" if tuned else "")
        for f in ([base] if base is not None else []) + refinements:
            refine_lines = set(str(t) for t in ((f.refine or {}).get("tuned_on_gt") or []))
            for line in f.protocol.get("tuned_on_gt") or []:
                if str(line) not in refine_lines and str(line) not in extra_tuned:
                    extra_tuned.append(str(line))
    out = [table(["result", "folder", "split", "images", "mIoU (%)", "vs network alone (points)", "note"], rows,
                  [False, False, False, True, True, True, False], classes),
           '<p class="note">mIoU from each folder\'s <code>evaluation.json</code> (tag2mask predict / refine evaluate '
           "when the split has ground truth). The change is in mIoU points over the network alone on the same "
           "predictions. Highlighted rows: a SAMS α chosen by the ground truth of the split it is evaluated on, as "
           "the reference did (SPEC §13 item 9) — not a clean held-out number.</p>"]
    if extra_tuned:
        out.append('<p class="note">Also chosen with ground truth, per the evaluation protocols: '
                   f"{escape('; '.join(extra_tuned))}.</p>")
    return "\n".join(out)


def _stage2_facts(run: RunView, net_dir: Path) -> str:
    name = net_dir.name
    rec = run.stage(f"{STAGE2_DIR}/{name}")
    info, why = read_json_safe(net_dir / "model.json")
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
        points = read_losses(net_dir / "metrics.jsonl")
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
        rows.append(("training time", f"{secs:.1f} s ({duration(secs)}, from the manifest, summed over resumes)"))
    else:
        rows.append(("training time", f"not in the manifest (no {STAGE2_DIR}/{name} record)"))
    final = net_dir / "model.safetensors"
    n_ckpt = len(list((net_dir / "checkpoints").glob("*.safetensors"))) if (net_dir / "checkpoints").is_dir() else 0
    weights_state = ("final weights model.safetensors written" if final.is_file() else
                     "no final weights yet (training unfinished)")
    rows.append(("status", f"{(rec or {}).get('status', 'not in the manifest')}; {weights_state}; "
                           f"{n_ckpt} checkpoint(s)"))
    return table(None, [[escape(k), escape(str(v))] for k, v in rows], table_class="kv")


def _stage2_curves(net_dir: Path) -> str:
    name = net_dir.name
    out = []
    # the logs' "iter" is 0-based (the iteration just run): shown as iterations done, like train-seg prints them
    path = net_dir / "metrics.jsonl"
    points = [(x + 1, y) for x, y in read_losses(path)] if path.is_file() else []
    if not path.is_file():
        out.append(na(f"{STAGE2_DIR}/{name}/metrics.jsonl not found (training has not logged yet)"))
    elif not points:
        out.append(na(f"{STAGE2_DIR}/{name}/metrics.jsonl holds no finite loss yet"))
    else:
        shown = bin_means(points, MAX_CURVE_POINTS)
        note = (f"{len(points)} log lines, each the mean loss of the iterations since the previous one (recipe "
                f"log_every); first {points[0][1]:.4g}, last {points[-1][1]:.4g} (the 'last loss' train-seg prints)")
        if len(shown) < len(points):
            note += f"; {len(shown)} points shown (means of consecutive lines)"
        out.append(f"<figure style=\"max-width:none\">{loss_svg(shown, f'{name}: training loss')}"
                   f"<figcaption>{escape(note)}</figcaption></figure>")
    path = net_dir / "val.jsonl"
    val = [(x + 1, y) for x, y in read_losses(path, "miou")] if path.is_file() else []
    if not path.is_file():
        out.append(na(f"{STAGE2_DIR}/{name}/val.jsonl not found (no validation yet, a validation split without "
                       "ground truth, or val_every=0)"))
    elif not val:
        out.append(na(f"{STAGE2_DIR}/{name}/val.jsonl holds no finite mIoU yet"))
    else:
        best = max(val, key=lambda p: p[1])
        note = (f"{len(val)} validation(s), best {best[1]:.1f} after {best[0]:g} iterations, last {val[-1][1]:.1f} "
                "(on the validation split's ground truth)")
        out.append(f"<figure style=\"max-width:none\">"
                   f"{loss_svg(bin_means(val, MAX_CURVE_POINTS), f'{name}: validation mIoU (%)')}"
                   f"<figcaption>{escape(note)}</figcaption></figure>")
    return '<div class="row">' + "".join(out) + "</div>"


def stage_two_section(run: RunView) -> str:
    root = run.path / STAGE2_DIR
    recorded = sorted(k.split("/", 1)[1] for k in run.stages if k.startswith(f"{STAGE2_DIR}/"))
    if not root.is_dir():
        return na(f"stage II has not run (no {STAGE2_DIR}/ folder in this run); train a segmentation network on "
                   f"the fine seeds with: {STAGE2_COMMAND.format(run=run.path)}")
    nets = sorted(p for p in root.iterdir() if p.is_dir())
    if not nets:
        return na(f"{STAGE2_DIR}/ holds no network folder yet; train one with: "
                   f"{STAGE2_COMMAND.format(run=run.path)}")
    out = ['<p class="note">Segmentation networks trained on the seeds (SPEC §11, App. G), their predictions and '
           "refinements, like App. Tables S2/S3/S6.</p>"]
    missing = [n for n in recorded if not (root / n).is_dir()]
    if missing:
        out.append(na(f"in the manifest but without a folder: {', '.join(missing)}"))
    for net_dir in nets:
        out.append(f"<h3>{escape(net_dir.name)}</h3>")
        out.append(subsection(lambda d=net_dir: _stage2_facts(run, d)))
        out.append(subsection(lambda d=net_dir: _stage2_results(d)))
        out.append(subsection(lambda d=net_dir: _stage2_curves(d)))
    return "\n".join(out)
