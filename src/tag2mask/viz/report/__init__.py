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

The report only reads. Its modules: :mod:`.run` reads the run folder, :mod:`.html` holds the HTML primitives, and
one module per group of sections renders them (:mod:`.summary`: 1, 2, 4; :mod:`.stage_two`: 3; :mod:`.images`:
5; :mod:`.curves`: 6). The two figure panels that are results rather than files (the SAMS score map and the
dense-CRF seed) are computed by calling the seeding functions (see :mod:`.images`).
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from tag2mask.io import write_text
from tag2mask.viz.report.curves import curves_section, loss_svg
from tag2mask.viz.report.images import CRF_MISSING, figures_section, pick_examples
from tag2mask.viz.report.html import CSS, DISPLAY_WIDTH, guarded
from tag2mask.viz.report.run import learnable_parameters, load_superpixel_arrays, read_run
from tag2mask.viz.report.stage_two import stage_two_section
from tag2mask.viz.report.summary import efficiency_section, header_section, seed_quality_section

__all__ = ["CRF_MISSING", "DEFAULT_NAME", "DISPLAY_WIDTH", "build_report", "learnable_parameters",
           "load_superpixel_arrays", "loss_svg", "pick_examples", "write_report"]

DEFAULT_NAME = "report.html"


def build_report(run_dir: str | Path, n_images: int = 4) -> str:
    """The HTML text of the report of ``run_dir`` (see the module docstring for its sections)."""
    from tag2mask.errors import Tag2MaskError

    path = Path(run_dir)
    if not path.is_dir():
        raise Tag2MaskError(f"{path} is not a run folder (no such directory)")
    run = read_run(path)
    title = f"tag2mask run report — {path.resolve().name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        '<p class="note">FMA-WSSS: image tags → CAMs → SAM quasi-superpixel seeding → seeds. '
        "A static page: everything is embedded.</p>",
        *(f'<p class="warn">{escape(w)}</p>' for w in run.manifest.get("warnings", []) or [] if isinstance(w, str)),
        guarded("Run", lambda: header_section(run)),
        guarded("Seed quality", lambda: seed_quality_section(run)),
        guarded("Stage II: segmentation networks", lambda: stage_two_section(run)),
        guarded("Efficiency", lambda: efficiency_section(run)),
        guarded("Figures", lambda: figures_section(run, n_images)),
        guarded("Training curves", lambda: curves_section(run)),
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
