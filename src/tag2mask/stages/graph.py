"""The stage graph: the pipeline's stages in order (SPEC §0), the config sections each one's results depend on,
and the config hash of every stage.

A stage's hash covers its own sections and the hash of the stage it reads (and, for seeds, the quasi-superpixels'),
so a change anywhere upstream invalidates everything downstream and nothing else. Keys that never change results
are left out; keys that change only some images (``max_side``) are recorded per image instead
(:mod:`tag2mask.stages.inputs`).
"""

from __future__ import annotations

from typing import Any

from tag2mask.config import Config, value_at
from tag2mask.hashing import config_hash, plain

GRAPH: tuple[tuple[str, str | None, tuple[str, ...]], ...] = (
    # (stage, upstream stage, sections)
    ("superpixels", None, ("data.dataset", "data.root", "models.sam_type", "models.sam", "superpixels")),
    ("train_cls", None, ("data", "models.clip", "models.clip_arch", "prompts.cls", "train.cls")),
    ("cams_cls", "train_cls", ("cams", "caa.cls")),  # CAMs, then CAA in the same pass
    ("seeds_coarse", "cams_cls", ("seeds.coarse",)),
    ("train_seg", "seeds_coarse", ("prompts.seg", "train.seg")),
    ("cams_seg", "train_seg", ("cams", "caa.seg")),
    ("seeds_fine", "cams_seg", ("seeds.fine",)),
    # the training-free pipeline (pipeline: clip_es)
    ("cams_clip_es", None, ("data", "models.clip", "models.clip_arch", "cams", "clip_es.templates", "clip_es.box_thresh",
                            "clip_es.boxes", "clip_es.sinkhorn_iters", "clip_es.power", "clip_es.pos_embed_f16")),
    ("seeds_clip_es", "cams_clip_es", ("seeds.coarse", "clip_es.bg_power")),  # bg_power: CLIP-ES's argmax alpha
)

PIPELINE_STAGES = {
    "fma": ("superpixels", "train_cls", "cams_cls", "seeds_coarse", "train_seg", "cams_seg", "seeds_fine"),
    "clip_es": ("superpixels", "cams_clip_es", "seeds_clip_es"),
}
"""The stages (with a config hash) of each ``pipeline``."""

RESULT_NEUTRAL_KEYS = frozenset({"resume_every", "points_per_batch", "images_per_batch"})
"""Keys that never change results beyond float32 rounding (memory, speed, bookkeeping): left out of the stage
hashes."""

PER_IMAGE_KEYS = frozenset({"max_side"})
"""Keys that change only the images they apply to (``max_side``: images larger than it): left out of the stage
hashes and recorded, for those images only, in the stage folder's input ledger (:mod:`tag2mask.stages.inputs`)."""


OMITTED_AT_DEFAULT = {"models.clip_arch": ""}
"""Keys added after runs existed whose default reproduces the earlier behaviour: left out of the stage hashes while
they hold it, so that runs made before them keep their hashes (and are not redone)."""


def stage_hashes(config: Config) -> dict[str, str]:
    """The config hash of every stage of the config's pipeline (SAMS seeding also depends on the superpixels)."""
    out: dict[str, str] = {}
    for stage, upstream, sections in GRAPH:
        parents = [out[upstream]] if upstream else []
        if stage.startswith("seeds_"):
            parents.append(out["superpixels"])
        values = {s: plain(value_at(config, s)) for s in sections
                  if s not in OMITTED_AT_DEFAULT or value_at(config, s) != OMITTED_AT_DEFAULT[s]}
        out[stage] = config_hash(_drop_neutral(values), *parents)
    return {stage: out[stage] for stage in PIPELINE_STAGES[config.pipeline]}


def _drop_neutral(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _drop_neutral(v) for k, v in tree.items() if k not in RESULT_NEUTRAL_KEYS | PER_IMAGE_KEYS}
    return tree
