"""Typed config: presets carry the SPEC values, overrides are checked, hashes are stable and local."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tag2mask.config import (
    PRESETS,
    Config,
    config_from_dict,
    leaf_keys,
    load_config,
    preset_path,
)
from tag2mask.errors import ConfigError
from tag2mask.hashing import config_hash
from tag2mask.stages.graph import stage_hashes


def _leaves(d: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in d.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_sets_every_key_explicitly(name: str) -> None:
    raw = yaml.safe_load(preset_path(name).read_text(encoding="utf-8"))
    assert _leaves(raw) == set(leaf_keys())
    load_config(name)  # and it validates


@pytest.mark.parametrize("name", ["voc", "coco"])
def test_spec_presets_cite_a_spec_section_for_every_section(name: str) -> None:
    text = preset_path(name).read_text(encoding="utf-8")
    for section in ("superpixels", "prompts", "train", "cams", "caa", "seeds", "evaluate"):
        block = text.split(f"\n{section}:", 1)[1].split("\n\n", 1)[0]
        assert re.search(r"SPEC §\d", block), f"{name}.yaml: section {section} cites no SPEC section"


def test_voc_preset_has_the_spec_values() -> None:
    c = load_config("voc")
    sp = c.superpixels  # SPEC §7.2
    assert (sp.pred_iou_thresh, sp.stability_score_thresh, sp.points_per_side) == (0.86, 0.92, 32)
    assert sp.score_thresh_offset == [0.0, 0.0, 0.1] and sp.score_nms_offset == [0.0, 0.0, 1.0]
    assert sp.crop_n_layers == 1 and sp.crop_overlap_ratio == pytest.approx(512 / 1500)
    assert sp.hierarchy_recall_thresh == 0.3 and sp.min_mask_region_area == 100
    # SPEC §2.3
    assert (c.prompts.cls.n_ctx, c.prompts.cls.class_specific, c.prompts.cls.name_position) == (16, False, "end")
    assert (c.prompts.cls.ctx_std, c.prompts.cls.seed, c.prompts.cls.bg_prompts) == (0.015, "真", "named")
    assert (c.prompts.seg.class_specific, c.prompts.seg.name_position, c.prompts.seg.ctx_std) == (True, "front", 0.0125)
    assert (c.prompts.seg.seed, c.prompts.seg.bg_prompts) == ("机", "nameless")
    assert len(c.data.fg_names) == 20 and len(c.data.bg_names) == 25
    assert c.data.fg_names[14] == "person with clothes,people,human"
    # SPEC §5.1/5.2
    assert (c.train.cls.max_iter, c.train.cls.warmup_iter, c.train.cls.loss) == (1800, 500, "mcl")
    assert (c.train.seg.max_iter, c.train.seg.loss, c.train.seg.online_labels) == (17000, "cal", True)
    assert (c.train.cls.lr, c.train.cls.warmup_lr, c.train.cls.weight_decay) == (1e-3, 1e-5, 5e-4)
    assert (c.train.cls.augment.scale_low, c.train.cls.augment.scale_high) == (288, 480)
    # SPEC §6, §8
    assert (c.caa.cls.box_thresh, c.caa.cls.propagate, c.caa.cls.power, c.caa.cls.sinkhorn_iters) == (0.4, "score", 2, 1)
    assert (c.caa.seg.box_thresh, c.caa.seg.propagate) == (0.5, "cam")
    assert (c.seeds.coarse.bg_power, c.seeds.fine.bg_power) == (0.6, 0.7)


def test_coco_preset_has_the_spec_values() -> None:
    c = load_config("coco")
    assert len(c.data.fg_names) == 80 and len(c.data.bg_names) == 23
    assert "keyboard" not in c.data.bg_names and "sign" not in c.data.bg_names
    assert "sknowboard" in c.data.fg_names  # CLIP-ES typo kept (SPEC §13 item 21)
    assert (c.train.cls.max_iter, c.train.cls.warmup_iter, c.train.cls.sub_iter, c.train.cls.checkpoint) == (
        20500, 1000, 4, 6150)
    assert (c.train.seg.max_iter, c.train.seg.sub_iter, c.train.seg.checkpoint) == (75000, 8, 45000)
    assert (c.prompts.seg.class_specific, c.prompts.seg.name_position, c.prompts.seg.bg_prompts) == (
        False, "end", "named")
    assert (c.train.cls.augment.scale_low, c.train.cls.augment.scale_high, c.train.seg.augment.scale_high) == (
        318, 530, 531)
    assert (c.caa.cls.box_thresh, c.caa.cls.propagate, c.caa.seg.enabled) == (0.6, "cam", False)
    assert c.seeds.fine.bg_power == 1.0


def test_overrides_are_typed() -> None:
    c = load_config("voc", ["seeds.fine.bg_power=0.8", "train.cls.max_iter=10", "train.cls.warmup_iter=5", "train.cls.lr=2e-3",
                            "cams.scales=[1.0, 0.5]", "caa.seg.enabled=false", "seeds.coarse.norm_first=no_norm",
                            "train.cls.checkpoint=9", "data.bg_names=[]"])
    assert c.seeds.fine.bg_power == 0.8 and isinstance(c.seeds.fine.bg_power, float)
    assert c.train.cls.max_iter == 10 and c.train.cls.lr == 2e-3
    assert c.cams.scales == [1.0, 0.5] and c.caa.seg.enabled is False
    assert c.seeds.coarse.norm_first == "no_norm" and c.train.cls.checkpoint == 9
    assert c.data.bg_names == []
    assert load_config("voc", ["seeds.fine.bg_power=1"]).seeds.fine.bg_power == 1.0  # int widens to float


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("seeds.bg_power=0.7", "did you mean seeds.coarse.bg_power or seeds.fine.bg_power"),
        ("seeds.fine.bg_pwer=0.7", "did you mean seeds.fine.bg_power"),
        ("nosuch=1", "unknown config key 'nosuch'"),
        ("train.cls.max_iter=1.5", "train.cls.max_iter: expected an integer, got 1.5"),
        ("train.cls.max_iter=true", "expected an integer"),
        ("train.cls.amp=1", "train.cls.amp: expected true or false"),
        ("caa.cls.propagate=pixels", "'pixels' is not one of 'score' | 'cam'"),
        ("cams.scales=1.0", "cams.scales: expected list of number"),
        ("seeds.fine=0.7", "seeds.fine: expected a mapping"),
        ("seeds.fine.bg_power", "must look like key=value"),
        ("train.cls.sub_iter=3", "must be divisible by sub_iter"),
        ("superpixels.score_nms_offset=[0, 1]", "needs 3 values"),
        ("train.cls.checkpoint=last", "'last' is not 'final' | integer"),
        ("train.cls.checkpoint=2000", "'final' or an iteration in 1..max_iter"),
    ],
)
def test_bad_overrides_are_clear_errors(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config("voc", [override])
    assert fragment in str(e.value)


def test_unknown_preset_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="presets: voc, coco, demo"):
        load_config("pascal")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_file_preset_and_round_trip(tmp_path: Path) -> None:
    c = load_config("coco", ["seeds.fine.bg_power=0.9"])
    path = tmp_path / "mine.yaml"
    path.write_text(c.to_yaml(), encoding="utf-8")
    again = load_config(path)
    assert again == c
    assert config_from_dict(c.to_dict()) == c


def test_hash_is_stable_and_order_free() -> None:
    # a literal value: the hash must not change between versions or platforms for the same sub-config
    assert config_hash({"a": 1, "b": [0.5, "x"]}) == config_hash({"b": [0.5, "x"], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 1.5})
    assert config_hash(Config().seeds.fine) == config_hash(load_config("voc").seeds.fine)
    assert config_hash({"a": 1}, "parent") != config_hash({"a": 1})


def test_stage_hashes_change_only_downstream() -> None:
    base = stage_hashes(load_config("voc"))
    fine = stage_hashes(load_config("voc", ["seeds.fine.bg_power=0.8"]))
    assert [s for s in base if base[s] != fine[s]] == ["seeds_fine"]
    caa = stage_hashes(load_config("voc", ["caa.cls.box_thresh=0.3"]))
    assert [s for s in base if base[s] != caa[s]] == ["cams_cls", "seeds_coarse", "train_seg", "cams_seg", "seeds_fine"]
    sp = stage_hashes(load_config("voc", ["superpixels.pred_iou_thresh=0.8"]))
    assert [s for s in base if base[s] != sp[s]] == ["superpixels", "seeds_coarse", "train_seg", "cams_seg",
                                                      "seeds_fine"]
    runtime = stage_hashes(load_config("voc", ["runtime.num_workers=1"]))
    assert runtime == base
    neutral = stage_hashes(load_config("voc", ["train.cls.resume_every=7", "superpixels.points_per_batch=16"]))
    assert neutral == base  # memory and bookkeeping settings never invalidate results


def test_clip_arch_is_checked_and_invalidates_the_clip_stages() -> None:
    base = stage_hashes(load_config("voc"))
    arch = stage_hashes(load_config("voc", ["models.clip_arch=ViT-B-16"]))
    assert [s for s in base if base[s] != arch[s]] == ["train_cls", "cams_cls", "seeds_coarse", "train_seg",
                                                        "cams_seg", "seeds_fine"]
    free = [stage_hashes(load_config("voc-clip-es", o)) for o in ([], ["models.clip_arch=ViT-B-16-quickgelu"])]
    assert [s for s in free[0] if free[0][s] != free[1][s]] == ["cams_clip_es", "seeds_clip_es"]
    with pytest.raises(ConfigError, match="models.clip_arch=ViT-B-17 is not an OpenCLIP model name; did you mean "
                                          "ViT-B-16"):
        load_config("voc", ["models.clip_arch=ViT-B-17"])


def test_an_empty_clip_arch_hashes_as_if_the_key_did_not_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs made before models.clip_arch existed keep their stage hashes (and are not redone)."""
    from tag2mask.stages import graph

    now = {p: stage_hashes(load_config(p)) for p in ("voc", "voc-clip-es")}
    assert stage_hashes(load_config("voc", ["models.clip_arch=ViT-B-16"])) != now["voc"]  # a set one counts
    without = tuple((s, up, tuple(k for k in keys if k != "models.clip_arch")) for s, up, keys in graph.GRAPH)
    monkeypatch.setattr(graph, "GRAPH", without)
    assert {p: stage_hashes(load_config(p)) for p in now} == now


def test_superpixel_pattern_override_loads_its_values() -> None:
    c = load_config("voc", ["superpixels.preset=official_default", "superpixels.points_per_side=16"])
    sp = c.superpixels
    assert sp.preset == "official_default" and sp.points_per_side == 16  # later overrides still apply
    assert (sp.pred_iou_thresh, sp.stability_score_thresh, sp.crop_n_layers) == (0.88, 0.95, 0)
    assert sp.hierarchy_recall_thresh is None and sp.score_nms_offset == [0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="unknown pattern 'nope'"):
        load_config("voc", ["superpixels.preset=nope"])
    assert load_config("voc").superpixels == load_config("voc", ["superpixels.preset=l2_nmsf_s1_rsw3"]).superpixels


@pytest.mark.parametrize(("override", "fragment"), [
    ("seeds.fine.bg_power=-0.5", "seeds.fine.bg_power=-0.5 is out of range: a finite number >= 0"),
    ("seeds.coarse.bg_power=.nan", "seeds.coarse.bg_power=nan is out of range"),
    ("train.cls.lr=.nan", "train.cls.lr=nan is out of range: a finite number > 0"),
    ("train.seg.lr=0", "train.seg.lr=0.0 is out of range: a finite number > 0"),
    ("caa.cls.box_thresh=1.5", "caa.cls.box_thresh=1.5 is out of range: 0 <= box_thresh <= 1"),
    ("caa.seg.box_thresh=-0.1", "caa.seg.box_thresh=-0.1 is out of range"),
    ("train.cls.batch_size=0", "train.cls.batch_size=0 is out of range: a positive integer"),
    ("train.seg.sub_iter=0", "train.seg.sub_iter=0 is out of range: a positive integer"),
    ("train.cls.resume_every=0", "train.cls.resume_every=0 is out of range"),
    ("prompts.cls.n_ctx=0", "prompts.cls.n_ctx=0 is out of range: a positive integer"),
    ("train.cls.augment.crop_size=0", "train.cls.augment.crop_size=0 is out of range"),
    ("cams.att_layers=0", "cams.att_layers=0 is out of range: a positive integer"),
    ("cams.images_per_batch=0", "cams.images_per_batch=0 is out of range: an integer in 1..256"),
    ("caa.seg.sinkhorn_iters=0", "caa.seg.sinkhorn_iters=0 is out of range: a positive integer"),
    ("evaluate.argmax_bg_powers=[]", "evaluate.argmax_bg_powers=[] is out of range: a non-empty list"),
    ("cams.scales=[]", "cams.scales=[] is out of range: a non-empty list of positive numbers"),
    ("seeds.fine.norm_first=gamma_softmax", "gamma_softmax is not implemented"),
    ("seeds.coarse.bg_method=thresh", "thresh needs a constant background score"),
    ("runtime.device=tpu", "runtime.device='tpu' is out of range: auto, cpu, cuda, cuda:N or mps"),
])
def test_absurd_settings_are_refused_before_any_work(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config("voc", [override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_every_preset_is_in_range() -> None:
    for preset in ("voc", "coco", "demo"):
        load_config(preset, ["runtime.device=cuda:1", "caa.cls.box_thresh=1", "seeds.fine.bg_power=0"])


def test_a_sam_file_of_another_type_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"models.sam=sam_vit_h_4b8939.pth is the vit_h file but "
                                          r"models.sam_type=vit_b: .*models.sam=sam_vit_b_01ec64.pth"):
        load_config("voc", ["models.sam_type=vit_b"])
    load_config("voc", ["models.sam_type=vit_b", "models.sam=sam_vit_b_01ec64.pth"])  # both: fine
    load_config("voc", ["models.sam_type=vit_b", "models.sam=/my/finetuned_sam.pth"])  # any own file: fine
    load_config("voc", ["models.sam_type=vit_l", "models.sam=vit_l"])  # the registry name: fine

