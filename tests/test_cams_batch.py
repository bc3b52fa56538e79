"""CAM inference with images of one size batched (``cams.images_per_batch``): each image's file equals the one
it gets alone, to float32 rounding; a batch of one is bit-exact; the stage groups images by their CLIP input size."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tag2mask.config import ConfigError, load_config
from tag2mask.stages.cams import cam_batch, cam_one, clip_es_cam_batch, same_size_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FILE_KEYS = ("cam", "cam_raw", "logits", "att")


def _rand_images(shapes: list[tuple[int, int]], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def _assert_same_file(batched: dict, alone: dict, rtol: float) -> None:
    assert batched["fg_cls"].tolist() == alone["fg_cls"].tolist()
    assert batched["size"].tolist() == alone["size"].tolist()
    for key in FILE_KEYS:
        if key in alone:
            a, b = alone[key].astype(np.float32), batched[key].astype(np.float32)
            assert b.shape == a.shape, key
            scale = max(float(np.abs(a).max()), 1e-12)
            tol = rtol if key != "att" else 1e-3  # stored in float16: one unit in the last place is ~5e-4
            assert float(np.abs(a - b).max()) <= tol * scale, (key, float(np.abs(a - b).max()), scale)


@pytest.fixture(scope="module")
def tiny_model() -> SimpleNamespace:
    from tag2mask.cam import GradCAMClip
    from tag2mask.models.prompts import PromptLearner
    from tag2mask.models.tiny import tiny_clip

    clip = tiny_clip(seed=0, image_size=64)
    names = ["cat", "dog", "bird", "boat", "car"]
    learner = PromptLearner(clip, names, ["sky", "ground", "tree"], n_ctx=4, class_specific=False,
                            name_position="end")
    with torch.no_grad():
        learner.ctx.normal_(0, 0.5, generator=torch.Generator().manual_seed(3))  # a trained-looking context
    model = GradCAMClip(clip, learner).eval()
    with torch.no_grad():
        text = model.text_features()
    config = load_config("demo", ["cams.save_att=true"])
    return SimpleNamespace(model=model, text=text, config=config)


def test_a_batch_gives_each_image_its_own_cam_file(tiny_model: SimpleNamespace) -> None:
    """Three images of one size and one of another, different classes each (one, two and three positives)."""
    m = tiny_model
    images = _rand_images([(48, 64), (40, 60), (48, 64), (64, 48)], seed=1)  # 40×60 aligns to 48×64 too
    classes = [np.array([1]), np.array([0, 2, 4]), np.array([3, 4]), np.array([0, 2])]
    batched = cam_batch(m.model, images, classes, m.config, "cls", "cpu", m.text)
    for image, fg, b in zip(images, classes, batched):
        alone = cam_one(m.model, image, fg, m.config, "cls", "cpu", m.text)
        _assert_same_file(b, alone, rtol=1e-5)
        expected = (len(fg), 4, 3) if image.shape[0] == 64 else (len(fg), 3, 4)
        assert b["cam"].shape == expected


def test_a_batch_of_one_is_bit_exact(tiny_model: SimpleNamespace) -> None:
    m = tiny_model
    (image,) = _rand_images([(48, 64)], seed=2)
    fg = np.array([0, 3])
    from tag2mask.cam.image import prepare_image
    from tag2mask.stages.cams import refine

    alone = cam_one(m.model, image, fg, m.config, "cls", "cpu", m.text)
    again = cam_batch(m.model, [image], [fg], m.config, "cls", "cpu", m.text)[0]
    for key in FILE_KEYS:
        np.testing.assert_array_equal(again[key], alone[key])
    # what the stage computed before batching existed: one image's forward, its CAM refined by CAA
    labels = torch.zeros(1, 5)
    labels[0, torch.from_numpy(fg)] = 1
    out = m.model(prepare_image(image), labels, need_attention=True, text_features=m.text)
    raw = out.cam.detach().numpy()
    np.testing.assert_array_equal(alone["cam_raw"], raw)
    np.testing.assert_array_equal(alone["cam"], refine(raw, out.att[0].numpy(), m.config, "cls"))
    np.testing.assert_array_equal(alone["logits"], out.logits[0].detach().numpy())
    np.testing.assert_array_equal(alone["att"], out.att[0].numpy().astype(np.float16))
    assert alone["fg_cls"].tolist() == fg.tolist()


def test_cam_output_image_slices_one_image(tiny_model: SimpleNamespace) -> None:
    from tag2mask.cam.image import prepare_image

    m = tiny_model
    images = _rand_images([(48, 64), (48, 64)], seed=3)
    x = torch.cat([prepare_image(im) for im in images])
    labels = torch.tensor([[0, 1, 0, 1, 0], [1, 0, 0, 0, 1]], dtype=torch.float32)
    out = m.model(x, labels, need_attention=True, text_features=m.text)
    second = out.image(1)
    alone = m.model(x[1:], labels[1:], need_attention=True, text_features=m.text)
    assert second.pairs.tolist() == [[0, 0], [0, 4]] == alone.pairs.tolist()
    for name in ("cam", "logits", "probs", "att", "image_embedding"):
        torch.testing.assert_close(getattr(second, name), getattr(alone, name), rtol=1e-5, atol=1e-6)
    with pytest.raises(IndexError):
        out.image(2)


def test_vit_b16_batch_equals_one_at_a_time(random_vit_b16: torch.nn.Module) -> None:
    """The full-width network (the random ViT-B/16 of the reference cases), training-free CAMs: 2 images of one
    size with 1 and 3 classes, batched vs one at a time: the same files to 1e-5 relative."""
    from tag2mask.cam.clip_es import clip_es_model, clip_es_text_features
    config = load_config("voc-clip-es", [])
    fg = list(config.data.fg_names)
    text = clip_es_text_features(random_vit_b16, [*fg, *config.data.bg_names])
    model = clip_es_model(random_vit_b16, len(fg))
    images = _rand_images([(200, 300), (200, 300)], seed=4)
    classes = [np.array([6]), np.array([2, 8, 14])]
    batched = clip_es_cam_batch(model, images, classes, config, "cpu", text)
    for image, fg_cls, b in zip(images, classes, batched):
        alone = clip_es_cam_batch(model, [image], [fg_cls], config, "cpu", text)[0]
        assert b["cam"].shape == (len(fg_cls), 13, 19)
        _assert_same_file(b, alone, rtol=1e-5)


def _write(folder: Path, name: str, h: int, w: int) -> Path:
    path = folder / f"{name}.png"
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(path)
    return path


def test_same_size_batches_group_by_clip_input_size(tmp_path: Path) -> None:
    sizes = {"a": (48, 64), "b": (64, 48), "c": (40, 60), "d": (48, 64), "e": (47, 63), "f": (64, 48)}
    paths = {k: _write(tmp_path, k, *hw) for k, hw in sizes.items()}
    paths["g"] = tmp_path / "g.png"
    paths["g"].write_bytes(b"not an image")
    dataset = {k: SimpleNamespace(image_path=p) for k, p in paths.items()}
    cams = SimpleNamespace(images_per_batch=3, align=16, max_side=1024)
    ids = ["a", "b", "g", "c", "d", "e", "f"]
    # 48×64: a c d e (c and e align to it), 64×48: b f; g's header is unreadable: alone
    assert same_size_batches(ids, dataset, cams) == [["a", "c", "d"], ["e"], ["b", "f"], ["g"]]
    cams.images_per_batch = 1
    assert same_size_batches(ids, dataset, cams) == [[i] for i in ids]
    cams.images_per_batch, cams.max_side = 8, 64  # a larger image goes through CLIP at its capped size
    paths["h"] = _write(tmp_path, "h", 96, 128)  # capped to 48×64
    dataset["h"] = SimpleNamespace(image_path=paths["h"])
    assert same_size_batches(["h", "b", "a"], dataset, cams) == [["h", "a"], ["b"]]
    big = [f"big{k}" for k in range(3)]  # 768×1024: 3073 tokens, as much attention as 16 VOC images
    voc = [f"voc{k}" for k in range(20)]  # 375×500 → 384×512: 769 tokens
    for name in big:
        dataset[name] = SimpleNamespace(image_path=_write(tmp_path, name, 768, 1024))
    for name in voc:
        dataset[name] = SimpleNamespace(image_path=_write(tmp_path, name, 375, 500))
    cams.images_per_batch, cams.max_side = 32, 1024
    batches = same_size_batches([*big, *voc], dataset, cams)
    assert batches == [[b] for b in big] + [voc[:16], voc[16:]]  # capped by the attention they hold, not by 32


@pytest.mark.parametrize("value", [0, -1, 257])
def test_images_per_batch_out_of_range_is_a_config_error(value: int) -> None:
    with pytest.raises(ConfigError, match="cams.images_per_batch"):
        load_config("demo", [f"cams.images_per_batch={value}"])


def test_images_per_batch_leaves_the_stage_hashes_alone() -> None:
    from tag2mask.stages.graph import stage_hashes

    assert stage_hashes(load_config("voc", ["cams.images_per_batch=16"])) == stage_hashes(load_config("voc", []))


@pytest.fixture(scope="module")
def stage_env(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from tag2mask.data import make_synthetic_dataset, open_dataset
    from tag2mask.models.clip import load_clip
    from tag2mask.models.tiny import tiny_clip
    from tag2mask.stages.common import build_prompt_learner
    from tag2mask.testing import save_openai_state_dict

    base = tmp_path_factory.mktemp("cams_batch")
    root = make_synthetic_dataset(base / "syn", n_train=7, n_val=1, size=(48, 64), seed=5)
    save_openai_state_dict(tiny_clip(seed=0, image_size=64), base / "clip.pt")
    overrides = [f"data.root={root}", f"models.clip={base / 'clip.pt'}", "runtime.device=cpu"]
    config = load_config("demo", overrides)
    learner = build_prompt_learner(load_clip(base / "clip.pt"), config, "cls",
                                   open_dataset("synthetic", root, "train").class_names)
    with torch.no_grad():
        learner.ctx.normal_(0, 0.5, generator=torch.Generator().manual_seed(6))
    learner.save_context(base / "cls.pth")
    return SimpleNamespace(base=base, root=root, config=config, context=base / "cls.pth",
                           batched=load_config("demo", [*overrides, "cams.images_per_batch=3"]))


def test_the_stage_batched_writes_the_files_of_one_at_a_time(stage_env: SimpleNamespace) -> None:
    from tag2mask.io import load_npz
    from tag2mask.stages.cams import run_cams

    e = stage_env
    alone = run_cams(e.config, "cls", "train", e.base / "alone", context=e.context, show_progress=False)
    batched_config = e.batched
    batched = run_cams(batched_config, "cls", "train", e.base / "batched", context=e.context, show_progress=False)
    assert alone.computed == batched.computed == alone.total > 3
    for path in sorted((e.base / "alone").glob("*.npz")):
        _assert_same_file(load_npz(e.base / "batched" / path.name), load_npz(path), rtol=1e-5)
    again = run_cams(batched_config, "cls", "train", e.base / "batched", context=e.context, show_progress=False)
    assert again.computed == 0 and again.done == again.total  # resumed: every image recorded


def test_a_bad_image_stops_its_batch_and_keeps_the_batches_before(stage_env: SimpleNamespace) -> None:
    from tag2mask.data import open_dataset
    from tag2mask.errors import DataError
    from tag2mask.stages.cams import run_cams

    e = stage_env
    ds = open_dataset("synthetic", e.root, "train")
    labelled = [i for i in ds.ids if ds[i].labels]
    bad = Path(ds[labelled[4]].image_path)
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 3])  # truncated: the header still reads, the pixels do not
    config = e.batched
    out = e.base / "interrupted"
    try:
        with pytest.raises(DataError, match=bad.name):
            run_cams(config, "cls", "train", out, context=e.context, show_progress=False)
        assert sorted(p.stem for p in out.glob("*.npz")) == sorted(labelled[:3])  # the first batch was kept
    finally:
        bad.write_bytes(good)
    rest = run_cams(config, "cls", "train", out, context=e.context, show_progress=False)
    assert rest.computed == len(labelled) - 3 and rest.done == rest.total


def test_read_ahead_reads_the_next_item_while_this_one_is_worked_on() -> None:
    import threading

    from tag2mask.stages.common import read_ahead

    second_read = threading.Event()

    def read(k: int) -> int:
        if k == 1:
            second_read.set()
        return 10 * k

    seen = []
    for k, data in read_ahead([0, 1, 2], read):
        if k == 0:  # item 1 is read in the background while item 0 is being handled
            assert second_read.wait(timeout=10)
        seen.append((k, data))
    assert seen == [(0, 0), (1, 10), (2, 20)]
    assert list(read_ahead([], read)) == []


def test_read_ahead_raises_a_read_error_at_its_item() -> None:
    from tag2mask.errors import DataError
    from tag2mask.stages.common import read_ahead

    def read(k: int) -> int:
        if k == 2:
            raise DataError("item 2 is broken")
        return k

    handled = []
    with pytest.raises(DataError, match="item 2"):
        for k, _ in read_ahead([0, 1, 2, 3], read):
            handled.append(k)
    assert handled == [0, 1]
