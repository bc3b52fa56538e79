"""A CLIP that cannot know the classes or the images says so: the packaged tiny CLIP's restricted vocabulary,
the one-sentence warning, and where it appears (console, manifest, report, segment)."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest

from tag2mask.cli import main
from tag2mask.data import make_synthetic_dataset
from tag2mask.models.vocabulary import REAL_CLIP, known_token_ids, model_fit_warning, unknown_names
from tag2mask.models.weights import resolve_weight

SHAPES = ["circle", "square", "triangle", "ring", "cross"]
BACKGROUNDS = ["background", "ground", "wall", "texture"]


def test_the_packaged_model_knows_only_its_own_words() -> None:
    known = known_token_ids(resolve_weight("tiny-synthetic"))
    assert known is not None and 20 < len(known) < 60  # the words of its training captions, not 49,408
    assert unknown_names([*SHAPES, *BACKGROUNDS, ""], known) == []
    assert unknown_names(["dog", "circle", "traffic light", "dog"], known) == ["dog", "traffic light"]


def test_a_full_vocabulary_file_is_never_restricted(tmp_path: Path) -> None:
    from tag2mask.models.tiny import tiny_clip
    from tag2mask.testing import save_openai_state_dict

    save_openai_state_dict(tiny_clip(seed=0, image_size=32), tmp_path / "clip.pt")
    assert known_token_ids(tmp_path / "clip.pt") is None
    assert model_fit_warning(str(tmp_path / "clip.pt"), ["dog", "person"], synthetic_images=False) is None


def test_the_warning_is_one_sentence_naming_the_real_weights() -> None:
    assert model_fit_warning("tiny-synthetic", [*SHAPES, *BACKGROUNDS], synthetic_images=True) is None
    assert model_fit_warning("tiny-synthetic", SHAPES, synthetic_images=None) is None  # images unknown: names only
    names = model_fit_warning("tiny-synthetic", ["dog", "person", "circle"], synthetic_images=True)
    assert names is not None and "'dog', 'person'" in names and "'circle'" not in names
    images = model_fit_warning("tiny-synthetic", SHAPES, synthetic_images=False)
    assert images is not None and "images other than its synthetic shapes" in images and "class names" not in images
    for text in (names, images):
        assert text.startswith("warning: ") and text.endswith(f"use real weights: {REAL_CLIP}.")
        assert "\n" not in text and text.count(". ") == 0  # one sentence
        assert "models.clip=ViT-B/16" in text


def test_a_run_on_photos_with_other_classes_warns_everywhere(tmp_path: Path) -> None:
    data = make_synthetic_dataset(tmp_path / "photos", n_train=6, n_val=2, size=(48, 64))
    (data / "synthetic.json").unlink()  # "someone's own data": not the synthetic shapes as far as tag2mask knows
    renamed = {"circle": "dog", "square": "person", "triangle": "car", "ring": "tree", "cross": "boat"}
    (data / "classes.txt").write_text("\n".join(renamed.values()) + "\n")
    for csv in ("train.csv", "val.csv"):
        text = (data / csv).read_text()
        for old, new in renamed.items():
            text = text.replace(old, new)
        (data / csv).write_text(text)
    run_dir = tmp_path / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", "--preset", "demo", "--run-dir", str(run_dir), "data.dataset=folder",
                     f"data.root={data}", "data.fg_names=[]", "train.cls.batch_size=2", "train.seg.batch_size=2",
                     "train.cls.max_iter=2",
                     "train.seg.max_iter=2", "train.cls.warmup_iter=1", "train.seg.warmup_iter=1"]) == 0
    lines = [line for line in out.getvalue().splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1
    assert "'dog', 'person', 'car', 'tree', 'boat'" in lines[0] and "images other than" in lines[0]
    import html
    import json

    assert json.loads((run_dir / "manifest.json").read_text())["warnings"] == lines
    assert f'<p class="warn">{html.escape(lines[0])}</p>' in (run_dir / "report.html").read_text()
    # segment with the same run on an image from elsewhere
    photo = tmp_path / "elsewhere" / "photo.png"
    photo.parent.mkdir()
    shutil.copy(data / "images" / "train_0000.png", photo)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["segment", str(photo), "--classes", "dog", "--run", str(run_dir),
                     "--out", str(tmp_path / "seg")]) == 0
    assert out.getvalue().splitlines()[0] == lines[0]


@pytest.mark.parametrize("classes", ["circle"])
def test_segment_on_the_synthetic_shapes_does_not_warn(demo_run: tuple[Path, str], tmp_path: Path, classes: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, printed = demo_run
    assert "warning:" not in printed
    image = sorted((run_dir / "synthetic" / "images").glob("*.png"))[0]
    assert main(["segment", str(image), "--classes", classes, "--run", str(run_dir), "--out", str(tmp_path)]) == 0
    assert "warning:" not in capsys.readouterr().out
