"""Mask sources through transformers (tag2mask.models.sam_hf): SAM through transformers equals segment_anything's own
predictor on the same random weights; SAM-HQ, SAM 2.1 and EdgeTAM run through the same adapter and the unchanged
quasi-superpixel generator on random tiny configs; weights resolve in $TAG2MASK_WEIGHTS or the Hugging Face cache,
never downloaded; the config selects the source and the superpixel hash follows it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from tag2mask.config import load_config
from tag2mask.hashing import config_hash
from tag2mask.stages.graph import stage_hashes
from tag2mask.errors import MissingWeightsError, Tag2MaskError
from tag2mask.models.sam_hf import HFSamPredictor, load_hf_sam
from tag2mask.models.sam_hf_build import random_hf_sam, sam_to_hf, sam_to_hf_state_dict
from tag2mask.models.tiny import tiny_sam
from tag2mask.superpixels import QuasiSuperpixelGenerator

H, W = 96, 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# SAM: transformers' SamModel through the adapter == segment_anything's SamPredictor
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sam_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    sam = tiny_sam(seed=3)
    return sam, sam_to_hf(sam)


def _points(n: int, seed: int = 1) -> np.ndarray:
    pts = np.random.default_rng(seed).uniform(0, 1, (n, 2)) * [W, H]
    return np.concatenate([pts, [[0.0, 0.0], [W - 1.0, H - 1.0], [W / 2, H / 2]]])  # corners and centre too


def test_every_segment_anything_key_has_a_transformers_name(sam_pair: tuple) -> None:
    sam, hf = sam_pair
    converted = sam_to_hf_state_dict(sam.state_dict())
    assert set(converted) == set(hf.state_dict())  # sam_to_hf loaded them strictly
    with pytest.raises(KeyError, match="unknown segment_anything SAM key"):
        sam_to_hf_state_dict({"image_encoder.something_new": torch.zeros(1)})


def test_transformers_sam_equals_segment_anything_predictor(sam_pair: tuple) -> None:
    sam, hf = sam_pair
    ref, ours = SamPredictor(sam), HFSamPredictor(hf)
    image = _image()
    ref.set_image(image)
    ours.set_image(image)
    assert ours.input_size == ref.input_size and ours.original_size == ref.original_size
    emb = ours.get_image_embedding()
    assert emb.shape == ref.features.shape and (emb - ref.features).abs().max() < 1e-5
    points = ours.transform.apply_coords(_points(61), (H, W))
    np.testing.assert_array_equal(points, ref.transform.apply_coords(_points(61), (H, W)))
    coords = torch.as_tensor(points)[:, None, :]
    labels = torch.ones(len(points), 1, dtype=torch.int)
    m_ref, iou_ref, low_ref = ref.predict_torch(coords, labels, multimask_output=True, return_logits=True)
    m_ours, iou_ours, low_ours = ours.predict_torch(coords, labels, multimask_output=True, return_logits=True)
    assert m_ours.shape == m_ref.shape == (64, 3, H, W) and low_ours.shape == low_ref.shape == (64, 3, 64, 64)
    assert torch.equal(m_ours > hf.mask_threshold, m_ref > sam.mask_threshold)  # masks identical
    assert (iou_ours - iou_ref).abs().max() < 1e-5
    assert (low_ours - low_ref).abs().max() < 1e-4 and (m_ours - m_ref).abs().max() < 1e-4
    # thresholded output and the numpy API, as SamPredictor's
    masks, scores, low = ours.predict(_points(2)[:2], np.array([1, 0]))
    masks_ref, scores_ref, _ = ref.predict(_points(2)[:2], np.array([1, 0]))
    assert masks.dtype == bool and np.array_equal(masks, masks_ref) and np.abs(scores - scores_ref).max() < 1e-5


@pytest.mark.parametrize("keep_all", [True, False])
def test_the_generator_gives_identical_quasi_superpixels(sam_pair: tuple, keep_all: bool) -> None:
    """8×8 points and one crop layer (crops of other sizes: other resizing and padding), every mask kept (NMS off,
    no hierarchy filter: a random SAM's masks overlap so much that NMS leaves few), then the default pattern."""
    sam, hf = sam_pair
    params = {"points_per_side": 8, "crop_n_layers": 1, "points_per_batch": 64, "pred_iou_thresh": 0.0,
              "stability_score_thresh": 0.0}
    if keep_all:
        params.update(box_nms_thresh=1.0, crop_nms_thresh=1.0, hierarchy_recall_thresh=None)
    image = _image(5)
    ref = QuasiSuperpixelGenerator(SamPredictor(sam), **params).generate(image)
    ours = QuasiSuperpixelGenerator(HFSamPredictor(hf), **params).generate(image)
    assert len(ours) == len(ref) and len(ref) > (50 if keep_all else 0)
    assert np.array_equal(ours.masks, ref.masks) and np.array_equal(ours.levels, ref.levels)
    np.testing.assert_allclose(ours.predicted_iou, ref.predicted_iou, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.stability_score, ref.stability_score, rtol=0, atol=1e-6)
    if keep_all:
        assert set(ref.levels.tolist()) == {0, 1, 2}


# ---------------------------------------------------------------------------------------------------------------
# SAM-HQ, SAM 2.1, EdgeTAM on random tiny configs
# ---------------------------------------------------------------------------------------------------------------

KINDS = ("sam_hq", "sam2", "edgetam")
MASK_SOURCE_OF = {"sam_hq": "sam-hq", "sam2": "sam2", "edgetam": "edgetam"}


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, torch.nn.Module]:
    """Random tiny SAM-HQ / SAM 2 / EdgeTAM (EdgeTAM with its real RepViT-M1 image encoder, built offline by timm)."""
    return {kind: random_hf_sam(MASK_SOURCE_OF[kind], tiny=True) for kind in KINDS}


# every mask kept (random weights predict random scores), no NMS or hierarchy filter: all three levels come out
_KEEP_ALL = {"points_per_side": 4, "crop_n_layers": 0, "points_per_batch": 16, "pred_iou_thresh": 0.0,
             "stability_score_thresh": 0.0, "box_nms_thresh": 1.0, "hierarchy_recall_thresh": None}


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_models_through_the_adapter_and_the_generator(kind: str, tiny_models: dict) -> None:
    predictor = HFSamPredictor(tiny_models[kind])
    assert predictor.kind == kind and predictor.model.mask_threshold == 0.0
    image = _image(2)
    predictor.set_image(image)
    coords = torch.as_tensor(predictor.transform.apply_coords(_points(5), (H, W)))[:, None, :]
    masks, iou, low = predictor.predict_torch(coords, torch.ones(len(coords), 1, dtype=torch.int))
    assert masks.shape == (8, 3, H, W) and masks.dtype == torch.bool and iou.shape == (8, 3)
    assert low.shape == (8, 3, 64, 64) and torch.isfinite(iou).all() and torch.isfinite(low).all()
    generator = QuasiSuperpixelGenerator(predictor, **_KEEP_ALL)
    first, second = generator.generate(image), generator.generate(image)
    assert first.masks.shape[1:] == (H, W) and set(first.levels.tolist()) == {0, 1, 2}
    assert np.array_equal(first.masks, second.masks) and np.array_equal(first.levels, second.levels)  # deterministic
    assert np.array_equal(first.predicted_iou, second.predicted_iou)
    # the default pattern (NMS, hierarchy filter) runs too
    assert QuasiSuperpixelGenerator(predictor, points_per_side=4, crop_n_layers=1).generate(image).size == (H, W)


def test_sam_hq_masks_come_in_sam_order(tiny_models: dict) -> None:
    """SamHQModel sorts the three masks by predicted IoU; the adapter restores SAM's order, so that mask i stays
    level i. Permuting the IoU head's outputs changes the scores' order but not the masks of each token."""
    import copy

    model = tiny_models["sam_hq"]
    swapped = copy.deepcopy(model)
    head = swapped.mask_decoder.iou_prediction_head.proj_out
    perm = torch.tensor([0, 3, 1, 2])  # token 0 is the single-mask output
    with torch.no_grad():
        head.weight.copy_(head.weight[perm])
        head.bias.copy_(head.bias[perm] + torch.tensor([0.0, 5.0, 0.0, -5.0]))  # force a different ranking
    image = _image(4)
    out = []
    for m in (model, swapped):
        p = HFSamPredictor(m)
        p.set_image(image)
        coords = torch.as_tensor(p.transform.apply_coords(_points(7), (H, W)))[:, None, :]
        out.append(p.predict_torch(coords, torch.ones(len(coords), 1, dtype=torch.int), return_logits=True))
    (m_a, iou_a, _), (m_b, iou_b, _) = out
    assert torch.equal(m_a, m_b)  # each token's mask in its own place
    assert not torch.equal(iou_a.argsort(dim=1), iou_b.argsort(dim=1))  # while the rankings differ
    raw = model(image_embeddings=None, pixel_values=HFSamPredictor(model).preprocess(image)[0],
                input_points=coords[None].float(), multimask_output=True)
    torch.testing.assert_close(raw.iou_scores[0], iou_a.sort(dim=1, descending=True).values)  # SamHQModel's order


# ---------------------------------------------------------------------------------------------------------------
# Weights: folders, $TAG2MASK_WEIGHTS, the Hugging Face cache, messages
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def wdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "weights"
    d.mkdir()
    monkeypatch.setenv("TAG2MASK_WEIGHTS", str(d))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return d


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(("source", "kind"), [("sam-hq", "sam_hq"), ("sam2", "sam2"), ("edgetam", "edgetam")])
def test_official_repository_found_in_weights_folder(source: str, kind: str, tiny_models: dict, wdir: Path) -> None:
    from tag2mask.models.weights import HF_MASK_SOURCES

    repo = HF_MASK_SOURCES[source][1]
    tiny_models[kind].save_pretrained(wdir / repo)  # config.json + model.safetensors
    loaded = load_hf_sam(source)  # the official repository by default, from the weights folder
    assert type(loaded) is type(tiny_models[kind]) and not loaded.training
    assert _same_state(loaded, tiny_models[kind])


def test_hf_cache_snapshot_and_config_selection(sam_pair: tuple, wdir: Path, tmp_path: Path) -> None:
    from tag2mask.stages.superpixels import build_generator, hf_weights

    _, hf = sam_pair
    snapshot = tmp_path / "hub" / "models--facebook--sam-vit-huge" / "snapshots" / "abc123"
    hf.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    assert _same_state(load_hf_sam("sam"), hf)
    # transformers' default LayerNorm epsilon in the decoder (1e-6, in the converted checkpoints' configs) is put back
    # to segment_anything's 1e-5 on loading
    hf.config.mask_decoder_config.layer_norm_eps = 1e-6
    hf.save_pretrained(tmp_path / "eps")
    loaded = load_hf_sam("sam", tmp_path / "eps" / "config.json")
    assert loaded.config.mask_decoder_config.layer_norm_eps == 1e-5
    assert {m.eps for m in loaded.mask_decoder.transformer.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-5}
    hf.config.mask_decoder_config.layer_norm_eps = 1e-5
    # models.sam names a transformers repository: superpixels.source=sam runs SamModel through the adapter
    config = load_config("demo", ["superpixels.source=sam", "models.sam=facebook/sam-vit-huge"])
    assert hf_weights(config) == "facebook/sam-vit-huge"
    generator = build_generator(config, "cpu")
    assert isinstance(generator.predictor, HFSamPredictor) and generator.predictor.kind == "sam"
    # a .pth file or name keeps segment_anything's own SAM
    assert hf_weights(load_config("voc")) is None


def test_missing_and_wrong_weights_messages(sam_pair: tuple, wdir: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as e:
        load_hf_sam("sam2")
    msg = str(e.value)
    for part in ("facebook/sam2.1-hiera-large", "hf download", str(wdir / "facebook" / "sam2.1-hiera-large"), "TAG2MASK_WEIGHTS",
                 str(tmp_path / "hub")):
        assert part in msg, part
    with pytest.raises(MissingWeightsError, match="single checkpoint file"):
        (tmp_path / "sam2.1_hiera_large.pt").write_bytes(b"x")
        load_hf_sam("sam2", tmp_path / "sam2.1_hiera_large.pt")  # the sam2 package's file, not transformers'
    sam_pair[1].save_pretrained(tmp_path / "a-sam")
    with pytest.raises(Tag2MaskError, match=r"needs a 'sam2' model.*holds a 'sam' one \(that is superpixels.source=sam\)"):
        load_hf_sam("sam2", tmp_path / "a-sam")


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


def test_the_source_selects_weights_and_the_superpixel_hash() -> None:
    from tag2mask.stages.superpixels import generator_params, hf_weights, superpixels_key

    configs = {s: load_config("voc", [f"superpixels.source={s}"]) for s in ("sam", "sam-hq", "sam2", "edgetam")}
    assert {s: hf_weights(c) for s, c in configs.items()} == {
        "sam": None, "sam-hq": "syscv-community/sam-hq-vit-huge", "sam2": "facebook/sam2.1-hiera-large",
        "edgetam": "yonigozlan/EdgeTAM-hf"}
    assert hf_weights(load_config("voc", ["superpixels.source=sam2", "models.sam=/my/sam2"])) == "/my/sam2"
    assert len({superpixels_key(c, "train") for c in configs.values()}) == 4
    assert len({stage_hashes(c)["superpixels"] for c in configs.values()}) == 4
    assert all(generator_params(c) == generator_params(configs["sam"]) for c in configs.values())  # same grid
    sam = configs["sam"]  # segment_anything's key is what it was before the transformers sources
    before = config_hash({"dataset": "voc", "root": str(Path(sam.data.root).expanduser().resolve()), "split": "train",
                          "source": "sam", "sam_type": "vit_h", "sam": "sam_vit_h_4b8939.pth",
                          "params": {k: v for k, v in generator_params(sam).items() if k != "points_per_batch"}})
    assert superpixels_key(sam, "train") == before
    with pytest.raises(Exception, match="superpixels.source"):
        load_config("voc", ["superpixels.source=sam3"])


def test_official_architectures() -> None:
    """The benchmarks' full-size random models have the official repositories' shapes (configs only: no build)."""
    from tag2mask.models.sam_hf_build import official_config

    sam, hq = official_config("sam").vision_config, official_config("sam-hq")
    assert (sam.hidden_size, sam.num_hidden_layers, list(sam.global_attn_indexes)) == (1280, 32, [7, 15, 23, 31])
    assert hq.vision_config.hidden_size == hq.mask_decoder_config.vit_dim == 1280
    hiera = official_config("sam2").vision_config.backbone_config
    assert (hiera.hidden_size, hiera.blocks_per_stage, hiera.global_attention_blocks) == (144, [2, 6, 36, 4], [23, 33, 43])
    assert official_config("edgetam").vision_config.backbone_config.architecture == "repvit_m1.dist_in1k"


def test_the_pipeline_checks_the_mask_source_weights_before_any_work(tmp_path: Path, wdir: Path) -> None:
    from tag2mask.data import make_synthetic_dataset
    from tag2mask.stages.pipeline import preflight

    root = make_synthetic_dataset(tmp_path / "syn", n_train=8, n_val=1, size=(48, 64), seed=0)
    for source, repo in (("sam2", "facebook/sam2.1-hiera-large"), ("edgetam", "yonigozlan/EdgeTAM-hf")):
        config = load_config("demo", [f"data.root={root}", f"superpixels.source={source}"])
        with pytest.raises(MissingWeightsError, match=repo):
            preflight(config)
    preflight(load_config("demo", [f"data.root={root}"]))  # the demo's CPU source needs no weights


def test_the_superpixels_stage_runs_a_transformers_source(tiny_models: dict, tmp_path: Path) -> None:
    import json

    from tag2mask.data import make_synthetic_dataset
    from tag2mask.stages.superpixels import run_superpixels

    root = make_synthetic_dataset(tmp_path / "syn", n_train=2, n_val=1, size=(48, 64), seed=0)
    tiny_models["sam2"].save_pretrained(tmp_path / "my-sam2")
    config = load_config("demo", [f"data.root={root}", "superpixels.source=sam2", f"models.sam={tmp_path / 'my-sam2'}",
                                  "superpixels.points_per_side=4", "superpixels.crop_n_layers=0",
                                  "superpixels.pred_iou_thresh=0", "superpixels.stability_score_thresh=0"])
    result = run_superpixels(config, "train", show_progress=False)
    about = json.loads((result.folder / "superpixels.json").read_text())
    assert about["source"] == "sam2" and about["models"] == {"transformers": str(tmp_path / "my-sam2")}
    assert result.done == result.total == result.computed == 2
    assert run_superpixels(config, "train", show_progress=False).computed == 0  # resumed: nothing left
