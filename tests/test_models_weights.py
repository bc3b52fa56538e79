"""Weights folder, known files, name → path resolution and its error messages (no model is built here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tag2mask.errors import MissingWeightsError, Tag2MaskError
from tag2mask.models.weights import KNOWN_WEIGHTS, find_hub_models, find_weights, resolve_weight, weights_dir


@pytest.fixture
def wdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "weights"
    d.mkdir()
    monkeypatch.setenv("TAG2MASK_WEIGHTS", str(d))
    return d


def test_weights_dir_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAG2MASK_WEIGHTS", str(tmp_path / "w"))
    assert weights_dir() == tmp_path / "w"
    monkeypatch.setenv("TAG2MASK_WEIGHTS", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights_dir() == tmp_path / ".cache" / "tag2mask" / "weights"
    monkeypatch.delenv("TAG2MASK_WEIGHTS")
    assert weights_dir() == tmp_path / ".cache" / "tag2mask" / "weights"


def test_registry_has_the_official_files() -> None:
    files = {w.name: (w.filename, w.url) for w in KNOWN_WEIGHTS}
    assert files["ViT-B/16"][0] == "ViT-B-16.pt"
    assert files["ViT-B/32"][0] == "ViT-B-32.pt"
    assert files["ViT-L/14"][0] == "ViT-L-14.pt"
    assert files["ViT-L/14@336px"][0] == "ViT-L-14-336px.pt"
    assert files["vit_h"][0] == "sam_vit_h_4b8939.pth"
    assert files["vit_l"][0] == "sam_vit_l_0b3195.pth"
    assert files["vit_b"][0] == "sam_vit_b_01ec64.pth"
    assert files["resnet101"][0] == "resnet101-63fe2227.pth"
    assert files["swin-l-in22k"][0] == "swin-large-patch4-window12-384-in22k.safetensors"
    for w in KNOWN_WEIGHTS:
        if w.kind == "clip":
            sha = w.url.split("/")[-2]
            assert w.url.startswith("https://openaipublic.azureedge.net/clip/models/") and len(sha) == 64
            assert w.url.endswith("/" + w.filename)
        elif w.kind == "sam":
            assert w.url == f"https://dl.fbaipublicfiles.com/segment_anything/{w.filename}"
        elif w.cache == "torch":  # torchvision's files, under the name torch hub caches them
            assert w.url == f"https://download.pytorch.org/models/{w.filename}"
        else:  # Microsoft's Hugging Face checkpoints, stored under a name that says which one
            assert w.url == f"https://huggingface.co/{w.hub_repo}/resolve/main/model.safetensors"
            assert w.filename == w.hub_repo.split("/")[1] + ".safetensors"


def test_existing_path_is_returned_as_is(tmp_path: Path, wdir: Path) -> None:
    f = tmp_path / "anything.bin"
    f.write_bytes(b"x")
    assert resolve_weight(f) == f
    assert resolve_weight(str(f), kind="sam") == f


@pytest.mark.parametrize(
    ("name", "kind", "filename"),
    [
        ("ViT-B/16", "clip", "ViT-B-16.pt"),
        ("ViT-B-16.pt", "clip", "ViT-B-16.pt"),
        ("vit_h", "sam", "sam_vit_h_4b8939.pth"),
    ],
)
def test_known_name_resolves_in_weights_dir(wdir: Path, name: str, kind: str, filename: str) -> None:
    (wdir / filename).write_bytes(b"x")
    assert resolve_weight(name, kind=kind) == wdir / filename  # type: ignore[arg-type]


def test_missing_clip_message(wdir: Path) -> None:
    with pytest.raises(MissingWeightsError) as e:
        resolve_weight("ViT-B/16")
    msg = str(e.value)
    for part in ("ViT-B-16.pt", str(wdir), "TAG2MASK_WEIGHTS", "openaipublic.azureedge.net", "curl -L -o"):
        assert part in msg
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, Tag2MaskError)


def test_missing_sam_message(wdir: Path) -> None:
    with pytest.raises(MissingWeightsError) as e:
        resolve_weight("vit_h", kind="sam")
    msg = str(e.value)
    for part in ("sam_vit_h_4b8939.pth", str(wdir), "TAG2MASK_WEIGHTS", "dl.fbaipublicfiles.com/segment_anything"):
        assert part in msg
    assert msg.splitlines()[-1].startswith("No SAM file (or no GPU)? superpixels.source=felzenszwalb")


@pytest.mark.parametrize(("name", "kind", "alternative"), [
    ("ViT-B/16", "clip", "'tag2mask demo' runs the pipeline with the packaged tiny CLIP"),
    ("vit_h", "sam", "superpixels.source=felzenszwalb (or slic) makes quasi-superpixels on the CPU"),
    ("resnet101", "backbone", "--backbone-weights none"),
    ("/nowhere/resnet101.pth", "backbone", "--backbone-weights none"),
    ("no-such-sam", "sam", "superpixels.source=felzenszwalb"),
])
def test_every_missing_file_names_the_way_without_it(wdir: Path, name: str, kind: str, alternative: str) -> None:
    with pytest.raises(MissingWeightsError) as e:
        resolve_weight(name, kind=kind)  # type: ignore[arg-type]
    assert alternative in str(e.value).splitlines()[-1]


def test_unknown_name_lists_known_names(wdir: Path) -> None:
    with pytest.raises(MissingWeightsError) as e:
        resolve_weight("ViT-H-99")
    msg = str(e.value)
    assert "ViT-H-99" in msg and "ViT-B/16" in msg and "ViT-L/14@336px" in msg and "TAG2MASK_WEIGHTS" in msg
    with pytest.raises(MissingWeightsError, match="vit_b"):
        resolve_weight("ViT-B/16", kind="sam")  # a CLIP name is not a SAM name
    with pytest.raises(MissingWeightsError, match="nowhere.pt"):
        resolve_weight(wdir / "nowhere.pt")


def test_find_weights(wdir: Path) -> None:
    (wdir / "sam_vit_b_01ec64.pth").write_bytes(b"x")
    rows = find_weights()
    assert [r[0] for r in rows] == [w.name for w in KNOWN_WEIGHTS]
    found = {name: path for name, _, path in rows}
    assert found["vit_b"] == wdir / "sam_vit_b_01ec64.pth"
    assert found["ViT-B/16"] is None


def test_find_hub_models_in_the_weights_folder_and_the_hub_cache(wdir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    clip = wdir / "openai" / "clip-vit-base-patch16"  # the weights folder: <org>/<name>
    clip.mkdir(parents=True)
    (clip / "model.safetensors").write_bytes(b"x")
    assert dict((repo, found) for _, repo, found in find_hub_models())["openai/clip-vit-base-patch16"] is None
    (clip / "config.json").write_text("{}")  # a folder counts with its config.json
    snapshot = tmp_path / "hub" / "models--facebook--sam2.1-hiera-large" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "pytorch_model.bin").write_bytes(b"x")
    rows = find_hub_models()
    assert rows[0][:2] == ("CLIP ViT-B/16 (HF)", "openai/clip-vit-base-patch16")
    found = {repo: folder for _, repo, folder in rows}
    assert found == {"openai/clip-vit-base-patch16": clip, "facebook/sam-vit-huge": None,
                     "syscv-community/sam-hq-vit-huge": None, "facebook/sam2.1-hiera-large": snapshot,
                     "yonigozlan/EdgeTAM-hf": None}
    info = subprocess.run([sys.executable, "-m", "tag2mask.cli", "info"], capture_output=True, text=True, timeout=120)
    line = next(ln for ln in info.stdout.splitlines() if "facebook/sam2.1-hiera-large" in ln)
    assert line.split()[:2] == ["SAM", "2.1"] and line.endswith(str(snapshot))


def test_weights_module_does_not_import_torch() -> None:
    code = "import sys, tag2mask.models.weights; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
