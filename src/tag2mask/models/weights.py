"""Where model weight files live, which files tag2mask knows, and how to get them.

This module never imports torch: ``tag2mask info`` uses it and must stay fast.

The weights folder is ``$TAG2MASK_WEIGHTS`` when that variable is set (and not empty), else
``~/.cache/tag2mask/weights``. A known name (``"ViT-B/16"``, ``"vit_h"``, or the file name itself such as
``"ViT-B-16.pt"``) resolves to its official file name in that folder; any existing file path is used as is.

CLIP weights may also come as a Hugging Face ``CLIPModel`` folder (``config.json`` beside ``model.safetensors`` or
``pytorch_model.bin``) or an OpenCLIP checkpoint; :func:`resolve_clip` finds them, by path or by hub repository name
(``openai/clip-vit-base-patch16``): the folder of that name in the weights folder
(``$TAG2MASK_WEIGHTS/openai/clip-vit-base-patch16/``), else the repository's snapshot in the Hugging Face hub cache.
Nothing is ever downloaded; a missing repository is an error that gives the ``hf download`` command.

A few small models ship *inside* the package (``tag2mask/models/assets``) instead: ``"tiny-synthetic"``, the tiny
CLIP that tag2mask trains on its synthetic dataset for the offline demo (``scripts/train_tiny_clip.py``). Their
names resolve to the packaged file, never to the weights folder.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tag2mask.errors import MissingWeightsError, Tag2MaskError

WeightKind = Literal["clip", "sam", "backbone"]

ENV_VAR = "TAG2MASK_WEIGHTS"
DEFAULT_WEIGHTS_DIR = Path("~") / ".cache" / "tag2mask" / "weights"


@dataclass(frozen=True)
class WeightFile:
    """One official weight file: the name users type, the file name on disk, and where it comes from."""

    name: str
    kind: WeightKind
    filename: str
    url: str
    source: str
    cache: Literal["", "torch", "hf"] = ""
    """A library cache that may already hold the file: torch hub's ``checkpoints`` folder (same file name) or
    the Hugging Face hub cache (``hub_repo``'s ``model.safetensors`` or ``pytorch_model.bin``)."""
    hub_repo: str = ""


_OPENAI = "https://openaipublic.azureedge.net/clip/models"
_META = "https://dl.fbaipublicfiles.com/segment_anything"
_TORCHVISION = "https://download.pytorch.org/models"
_HF = "https://huggingface.co"

# The OpenAI addresses are the ones OpenAI's `clip` package and open_clip's `pretrained.py` list; the long hex
# folder name is the file's SHA-256.
KNOWN_WEIGHTS: tuple[WeightFile, ...] = (
    WeightFile(
        "ViT-B/16",
        "clip",
        "ViT-B-16.pt",
        f"{_OPENAI}/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
        "OpenAI CLIP",
    ),
    WeightFile(
        "ViT-B/32",
        "clip",
        "ViT-B-32.pt",
        f"{_OPENAI}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
        "OpenAI CLIP",
    ),
    WeightFile(
        "ViT-L/14",
        "clip",
        "ViT-L-14.pt",
        f"{_OPENAI}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
        "OpenAI CLIP",
    ),
    WeightFile(
        "ViT-L/14@336px",
        "clip",
        "ViT-L-14-336px.pt",
        f"{_OPENAI}/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
        "OpenAI CLIP",
    ),
    WeightFile("vit_h", "sam", "sam_vit_h_4b8939.pth", f"{_META}/sam_vit_h_4b8939.pth", "Meta Segment Anything"),
    WeightFile("vit_l", "sam", "sam_vit_l_0b3195.pth", f"{_META}/sam_vit_l_0b3195.pth", "Meta Segment Anything"),
    WeightFile("vit_b", "sam", "sam_vit_b_01ec64.pth", f"{_META}/sam_vit_b_01ec64.pth", "Meta Segment Anything"),
    # Stage-II backbones (ImageNet pre-training). ResNets: torchvision's IMAGENET1K_V1 files, the ones
    # torchvision.models.resnet*(weights="IMAGENET1K_V1") downloads into torch hub's cache. Swin: Microsoft's
    # Hugging Face checkpoints at window 12 / 384 px, the variants MMSegmentation's Mask2Former configs start from.
    WeightFile("resnet101", "backbone", "resnet101-63fe2227.pth", f"{_TORCHVISION}/resnet101-63fe2227.pth",
               "torchvision ImageNet-1k", cache="torch"),
    WeightFile("resnet50", "backbone", "resnet50-0676ba61.pth", f"{_TORCHVISION}/resnet50-0676ba61.pth",
               "torchvision ImageNet-1k", cache="torch"),
    WeightFile("resnet18", "backbone", "resnet18-f37072fd.pth", f"{_TORCHVISION}/resnet18-f37072fd.pth",
               "torchvision ImageNet-1k", cache="torch"),
    WeightFile("swin-b", "backbone", "swin-base-patch4-window12-384.safetensors",
               f"{_HF}/microsoft/swin-base-patch4-window12-384/resolve/main/model.safetensors",
               "Microsoft Swin-B ImageNet-1k (Hugging Face)", cache="hf",
               hub_repo="microsoft/swin-base-patch4-window12-384"),
    WeightFile("swin-b-in22k", "backbone", "swin-base-patch4-window12-384-in22k.safetensors",
               f"{_HF}/microsoft/swin-base-patch4-window12-384-in22k/resolve/main/model.safetensors",
               "Microsoft Swin-B ImageNet-21k (Hugging Face)", cache="hf",
               hub_repo="microsoft/swin-base-patch4-window12-384-in22k"),
    WeightFile("swin-l-in22k", "backbone", "swin-large-patch4-window12-384-in22k.safetensors",
               f"{_HF}/microsoft/swin-large-patch4-window12-384-in22k/resolve/main/model.safetensors",
               "Microsoft Swin-L ImageNet-21k (Hugging Face)", cache="hf",
               hub_repo="microsoft/swin-large-patch4-window12-384-in22k"),
)

_KIND_LABEL = {"clip": "CLIP", "sam": "SAM", "backbone": "backbone"}

# what to do instead of fetching the file, per kind: the last line of every missing-file error
_KIND_ALTERNATIVE = {
    "clip": "Without any weights, 'tag2mask demo' runs the pipeline with the packaged tiny CLIP on synthetic shapes.",
    "sam": "No SAM file (or no GPU)? superpixels.source=felzenszwalb (or slic) makes quasi-superpixels on the CPU "
           "without SAM (lower quality on photos).",
    "backbone": "Or train from scratch without any file: tag2mask train-seg ... --backbone-weights none.",
}

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
"""Where the packaged weight files live (shipped in the wheel as package data)."""


@dataclass(frozen=True)
class PackagedWeight:
    """A weight file shipped inside the package: the name users type and its file in :data:`ASSETS_DIR`."""

    name: str
    kind: WeightKind
    filename: str
    description: str

    @property
    def path(self) -> Path:
        return ASSETS_DIR / self.filename


PACKAGED_WEIGHTS: tuple[PackagedWeight, ...] = (
    PackagedWeight(
        "tiny-synthetic",
        "clip",
        "tiny_clip_synthetic.safetensors",
        "tiny CLIP ViT (patch 8) trained by tag2mask on its synthetic shapes dataset, for the offline demo",
    ),
)


def packaged_weight(name: str, kind: WeightKind) -> PackagedWeight | None:
    """The packaged weight of ``kind`` whose name or file name is ``name``, or None."""
    for w in PACKAGED_WEIGHTS:
        if w.kind == kind and name in (w.name, w.filename):
            return w
    return None


def weights_dir() -> Path:
    """The folder searched for weight files by name.

    ``$TAG2MASK_WEIGHTS`` if set and not empty, else ``~/.cache/tag2mask/weights`` (``~`` expanded). The folder
    is not created here.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_WEIGHTS_DIR.expanduser()


def known_weight(name: str, kind: WeightKind) -> WeightFile | None:
    """The registry entry of ``kind`` whose name or file name is ``name``, or None."""
    for w in KNOWN_WEIGHTS:
        if w.kind == kind and name in (w.name, w.filename):
            return w
    return None


def known_names(kind: WeightKind) -> list[str]:
    """The names of ``kind`` that :func:`resolve_weight` accepts (file names are accepted too), packaged last."""
    return [w.name for w in KNOWN_WEIGHTS if w.kind == kind] + [w.name for w in PACKAGED_WEIGHTS if w.kind == kind]


def download_hint(w: WeightFile, folder: Path) -> str:
    """Shell lines that fetch the official file ``w`` into ``folder``."""
    d = shlex.quote(str(folder))
    f = shlex.quote(str(folder / w.filename))
    return f"  mkdir -p {d} && curl -L -o {f} {w.url}\n  (or: wget -O {f} {w.url})"


def resolve_weight(name_or_path: str | os.PathLike[str], kind: WeightKind = "clip") -> Path:
    """Turn a weight name or a file path into the path of an existing file.

    An existing file path is returned as is (``~`` expanded). A known name of ``kind`` (e.g. ``"ViT-B/16"``,
    ``"vit_h"``, or its file name ``"ViT-B-16.pt"``) resolves to that file in :func:`weights_dir`; a packaged
    name (``"tiny-synthetic"``) resolves to its file in :data:`ASSETS_DIR`.

    Raises:
        MissingWeightsError: the file is not there. The message names the file, the folder searched, the
            ``TAG2MASK_WEIGHTS`` variable and the official download address; for an unknown name it lists
            the known names.
    """
    if kind not in _KIND_LABEL:
        raise ValueError(f"kind must be one of {', '.join(_KIND_LABEL)}, not {kind!r}")
    label = _KIND_LABEL[kind]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = os.fspath(name_or_path)
    packaged = packaged_weight(name, kind)
    if packaged is not None:
        if packaged.path.is_file():
            return packaged.path
        raise MissingWeightsError(
            f"{label} weights {packaged.name!r} should ship with tag2mask but {packaged.path} is missing: reinstall "
            f"tag2mask, or recreate the file with scripts/train_tiny_clip.py from the source tree."
        )
    w = known_weight(name, kind)
    folder = weights_dir()
    if w is None:
        known = f"Known {label} names: {', '.join(known_names(kind))}"
        if path.suffix or os.sep in name:
            raise MissingWeightsError(f"{label} weight file {name} does not exist. {known}.\n"
                                      f"{_KIND_ALTERNATIVE[kind]}")
        raise MissingWeightsError(
            f"{label} weights {name!r} not found: it is neither an existing file nor a known name. {known} "
            f"(looked up in {folder}, the weights folder; set {ENV_VAR} to use another folder).\n"
            f"{_KIND_ALTERNATIVE[kind]}"
        )
    found = folder / w.filename
    if found.is_file():
        return found
    cached = library_cache_file(w)
    if cached is not None:
        return cached
    caches = {"torch": f" or torch hub's cache ({torch_hub_checkpoints()})",
              "hf": f" or the Hugging Face cache ({hf_hub_cache()}, repository {w.hub_repo})"}.get(w.cache, "")
    raise MissingWeightsError(
        f"{label} weights {w.name!r} not found: no file {w.filename} in {folder} "
        f"(the weights folder: ${ENV_VAR} if set, else {DEFAULT_WEIGHTS_DIR}){caches}.\n"
        f"Download the official {w.source} file from {w.url}, e.g.:\n"
        f"{download_hint(w, folder)}\n"
        f"or set {ENV_VAR} to the folder that holds {w.filename}, or pass the file's path instead of the name.\n"
        f"{_KIND_ALTERNATIVE[kind]}"
    )


HF_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                  "pytorch_model.bin.index.json")
"""The weight files of a Hugging Face transformers model folder (a ``CLIPModel``'s beside its ``config.json``), in
the order they are used (safetensors first, as transformers does): one file, or the index of a sharded checkpoint
(its shards beside it)."""
SHARDED_HINT = ("a repository whose weights are sharded has model.safetensors.index.json and the "
                "model-0000k-of-0000n.safetensors files it names instead of model.safetensors: fetch those")
"""Said beside every ``hf download`` hint that names ``model.safetensors``."""
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
"""The weight files of an OpenCLIP repository on the hub (e.g. ``laion/CLIP-ViT-B-16-laion2B-s34B-b88K``)."""

_HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_WEIGHT_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".safetensors", ".ckpt"})


def is_hub_repo_name(name: str) -> bool:
    """Whether ``name`` reads as a Hugging Face hub repository (``owner/name``) rather than a file or a known name."""
    return (
        _HUB_REPO.fullmatch(name) is not None
        and Path(name).suffix.lower() not in _WEIGHT_SUFFIXES
        and known_weight(name, "clip") is None
    )


def hub_snapshots(repo: str) -> list[Path]:
    """The snapshot folders of the hub repository ``repo`` in :func:`hf_hub_cache`: the one ``refs/main`` names
    first, then the others, newest first. Empty when the cache has none. Never downloads."""
    base = hf_hub_cache() / f"models--{repo.replace('/', '--')}"
    try:
        folders = [p for p in (base / "snapshots").iterdir() if p.is_dir()]
        folders.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        ref = base / "refs" / "main"
        main = ref.read_text(encoding="utf-8").strip() if ref.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return []
    return sorted(folders, key=lambda p: p.name != main)  # stable: main's snapshot first, the rest newest first


def first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    """``folder / name`` for the first of ``names`` that is a file there, or None."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def hub_repo_folder(repo: str) -> Path:
    """Where the hub repository ``repo`` is looked for in the weights folder: ``weights_dir() / repo``."""
    return weights_dir() / repo


def hub_download_hint(repo: str, files: tuple[str, ...]) -> str:
    """Shell lines that fetch ``files`` of the hub repository ``repo`` into :func:`hub_repo_folder`."""
    folder = shlex.quote(str(hub_repo_folder(repo)))
    names = " ".join(files)
    return (f"  hf download {repo} {names} --local-dir {folder}\n"
            f"  (older huggingface_hub: huggingface-cli download {repo} {names} --local-dir {folder})")


def _clip_file_in(folder: Path, arch: str) -> Path | None:
    """The CLIP weight file in ``folder`` (OpenCLIP's names with ``arch``, else a HF model's), or None.

    Raises:
        Tag2MaskError: without ``arch``, the folder holds only an OpenCLIP checkpoint (it needs its model name).
    """
    found = first_file(folder, OPEN_CLIP_FILES if arch else HF_MODEL_FILES)
    if found is None and not arch and (other := first_file(folder, OPEN_CLIP_FILES)) is not None:
        raise Tag2MaskError(
            f"{other} is an OpenCLIP checkpoint: give the model name it was trained as, e.g. "
            f"models.clip_arch=ViT-B-16 (its open_clip_config.json, when there is one, names the architecture)."
        )
    return found


def resolve_clip(name_or_path: str | os.PathLike[str], arch: str = "") -> Path:
    """The weight file of a CLIP given by name, file, folder or hub repository name. Never downloads.

    Without ``arch`` (OpenAI or Hugging Face layout): a folder gives its ``model.safetensors`` or
    ``pytorch_model.bin`` (its ``config.json`` is read beside the file); with ``arch`` (an OpenCLIP model name) a
    folder gives its ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``. A hub repository name
    (``openai/clip-vit-base-patch16``) is such a folder in the weights folder (:func:`hub_repo_folder`), else its
    snapshot in the Hugging Face hub cache (:func:`hub_snapshots`). Anything else goes to :func:`resolve_weight`
    (files, OpenAI names such as ``"ViT-B/16"``, packaged models).

    Raises:
        MissingWeightsError: nothing found; the message names the folders searched and, for a hub repository,
            the command that fetches it.
    """
    files = OPEN_CLIP_FILES if arch else HF_MODEL_FILES
    wanted = f"{files[0]} (or {', '.join(files[1:])})" + ("" if arch else " beside config.json")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        found = _clip_file_in(path, arch)
        if found is None:
            raise MissingWeightsError(f"CLIP folder {path} holds no {wanted}.")
        return found
    name = os.fspath(name_or_path)
    if path.is_file() or not is_hub_repo_name(name):
        return resolve_weight(name_or_path, kind="clip")
    for folder in (hub_repo_folder(name), *hub_snapshots(name)):
        found = _clip_file_in(folder, arch)
        if found is not None:
            return found
    cache = hf_hub_cache() / f"models--{name.replace('/', '--')}"
    fetch = files[:1] if arch else ("config.json", files[0])
    raise MissingWeightsError(
        f"CLIP weights {name!r} not found: no folder {hub_repo_folder(name)} (the weights folder, ${ENV_VAR} if set, "
        f"else {DEFAULT_WEIGHTS_DIR}, then the repository name) holding {wanted}, and no snapshot of the "
        f"Hugging Face repository {name} in the hub cache ({cache}).\n"
        f"tag2mask never downloads. Fetch the repository's files with huggingface_hub's CLI, e.g.:\n"
        f"{hub_download_hint(name, fetch)}\n"
        f"({'' if arch else SHARDED_HINT + '; '}or pass the path of a folder that holds them instead of the name.)\n"
        f"{_KIND_ALTERNATIVE['clip']}"
    )


def open_clip_arch_names() -> list[str] | None:
    """The model names of open_clip's built-in configs (its ``model_configs/*.json``), found without importing it;
    None when open_clip is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    return sorted(p.stem for p in folder.glob("*.json"))


def torch_hub_checkpoints() -> Path:
    """torch hub's download folder (``$TORCH_HOME/hub/checkpoints``), found without importing torch."""
    home = os.environ.get("TORCH_HOME", "").strip()
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path("~") / ".cache")
        home = str(Path(xdg) / "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    cache = os.environ.get("HF_HUB_CACHE", "").strip()
    if cache:
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME", "").strip()
    if home:
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path("~") / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def library_cache_file(w: WeightFile) -> Path | None:
    """``w``'s file in the library cache its entry names (torch hub or Hugging Face hub), or None. Never downloads."""
    if w.cache == "torch":
        path = torch_hub_checkpoints() / w.filename
        return path if path.is_file() else None
    if w.cache == "hf" and w.hub_repo:
        for folder in hub_snapshots(w.hub_repo):
            found = first_file(folder, HF_MODEL_FILES)
            if found is not None:
                return found
    return None


def find_weights() -> list[tuple[str, str, Path | None]]:
    """Every known weight file as ``(name, filename, path found in weights_dir() or None)``, CLIP first."""
    folder = weights_dir()
    rows: list[tuple[str, str, Path | None]] = []
    for w in KNOWN_WEIGHTS:
        p = folder / w.filename
        rows.append((w.name, w.filename, p if p.is_file() else library_cache_file(w)))
    return rows


def hf_model_file(folder: Path) -> Path | None:
    """The weight file of a transformers model folder, the first of :data:`HF_MODEL_FILES` there
    (``model.safetensors``, its shard index, ``pytorch_model.bin``, its shard index), or None when the folder lacks
    ``config.json`` or every one of them."""
    return first_file(folder, HF_MODEL_FILES) if (folder / "config.json").is_file() else None


def is_hf_reference(value: str | os.PathLike[str]) -> bool:
    """True when ``value`` names a transformers model rather than one weight file: an existing folder, the
    ``config.json`` of one, a weight file (or a shard index) with a ``config.json`` beside it, or a hub repository
    name ``org/name`` that is not an existing file."""
    path = Path(value).expanduser()
    if path.is_dir():
        return True
    if path.is_file():
        weights = path.suffix in (".safetensors", ".bin") or path.name.endswith(".index.json")
        return path.name == "config.json" or (weights and (path.parent / "config.json").is_file())
    return is_hub_repo_name(os.fspath(value))


def resolve_hf_folder(name_or_path: str | os.PathLike[str], *, what: str, default_repo: str) -> Path:
    """The folder of a transformers model: ``config.json`` plus ``model.safetensors`` (or ``pytorch_model.bin``).

    ``name_or_path`` is a folder (or a file inside one), or a hub repository name ``org/name`` looked for in the
    weights folder (:func:`hub_repo_folder`) and then the Hugging Face hub cache (:func:`hub_snapshots`), as CLIP
    repositories are (:func:`resolve_clip`); ``""`` and ``"default"`` mean ``default_repo``. Nothing is ever
    downloaded. ``what`` names the model in messages (e.g. ``"SAM 2.1"``).

    Raises:
        MissingWeightsError: no complete folder. The message names the repository, the places searched, the
            command that fetches it and where it goes.
    """
    value = os.fspath(name_or_path).strip()
    repo = default_repo if value in ("", "default") else value
    path = Path(repo).expanduser()
    named = repo if is_hub_repo_name(repo) else default_repo
    fetch = (f"tag2mask never downloads; fetch the transformers files of the Hugging Face repository {named} on a "
             f"machine with internet, e.g.:\n{hub_download_hint(named, ('config.json', HF_MODEL_FILES[0]))}\n"
             f"({SHARDED_HINT}; or pass the path of a folder that holds them: models.sam=/path/to/folder.)")
    folder = path.parent if path.is_file() else path
    if folder.is_dir():
        if hf_model_file(folder) is not None:
            return folder
        single = f"{path} is a single checkpoint file" if path.is_file() else f"folder {folder} lacks them"
        raise MissingWeightsError(
            f"{what} weights: {single}; {what} loads a transformers model folder (config.json and "
            f"{' or '.join(HF_MODEL_FILES)}, the files of the model's Hugging Face repository). {fetch}")
    if not is_hub_repo_name(repo):
        raise MissingWeightsError(
            f"{what} weights {repo!r} not found: it is neither an existing folder nor a Hugging Face repository name "
            f"(org/name, e.g. {default_repo}). {fetch}\n{_KIND_ALTERNATIVE['sam']}")
    for candidate in (hub_repo_folder(repo), *hub_snapshots(repo)):
        if hf_model_file(candidate) is not None:
            return candidate
    cache = hf_hub_cache() / f"models--{repo.replace('/', '--')}"
    raise MissingWeightsError(
        f"{what} weights {repo!r} not found: no folder {hub_repo_folder(repo)} holding config.json and "
        f"{HF_MODEL_FILES[0]} (the weights folder: ${ENV_VAR} if set, else {DEFAULT_WEIGHTS_DIR}, then the repository "
        f"name), and no complete snapshot in the Hugging Face cache ({cache}). {fetch}\n{_KIND_ALTERNATIVE['sam']}"
    )


HF_MASK_SOURCES: dict[str, tuple[str, str]] = {
    "sam": ("SAM (transformers)", "facebook/sam-vit-huge"),
    "sam-hq": ("SAM-HQ", "syscv-community/sam-hq-vit-huge"),
    "sam2": ("SAM 2.1", "facebook/sam2.1-hiera-large"),
    "edgetam": ("EdgeTAM", "yonigozlan/EdgeTAM-hf"),
}
"""``superpixels.source`` values served by transformers (:mod:`tag2mask.models.sam_hf`): (name in messages, the
official Hugging Face repository loaded by default)."""


def mask_source_weights(source: str, sam: str) -> str | None:
    """The transformers weights (a folder or a Hugging Face repository id) that ``superpixels.source=source`` loads
    with ``models.sam=sam``, or None when none does: segment_anything's own SAM (``source="sam"`` with a weight file
    or name, the default) or a CPU source.

    For ``sam-hq``, ``sam2`` and ``edgetam``, ``""``, ``"default"`` and segment_anything's names (``vit_h``, the
    presets' ``sam_vit_h_4b8939.pth``, ``tiny``) stand for the source's official repository (:data:`HF_MASK_SOURCES`);
    for ``sam``, only a transformers folder or repository id (:func:`is_hf_reference`) selects transformers.
    """
    if source not in HF_MASK_SOURCES:
        return None
    if source == "sam":
        return sam if sam not in ("", "default") and is_hf_reference(sam) else None
    if sam in ("", "default", "tiny") or known_weight(Path(sam).name, "sam") is not None:
        return HF_MASK_SOURCES[source][1]
    return sam


HUB_CLIP = ("CLIP ViT-B/16 (HF)", "openai/clip-vit-base-patch16")
"""The Hugging Face ``CLIPModel`` of the paper's CLIP (``models.clip=openai/clip-vit-base-patch16``)."""


def find_hub_models() -> list[tuple[str, str, Path | None]]:
    """The Hugging Face repositories tag2mask knows, as ``(what, repository, folder found or None)``: the paper's
    CLIP in Hugging Face's layout, then the official repository of every transformers mask source. A folder counts
    when it holds ``config.json`` and a weight file (:func:`hf_model_file`); looked for in the weights folder
    (``<org>/<name>``), then in the Hugging Face hub cache."""
    rows: list[tuple[str, str, Path | None]] = []
    for what, repo in (HUB_CLIP, *HF_MASK_SOURCES.values()):
        found = next((f for f in (hub_repo_folder(repo), *hub_snapshots(repo)) if hf_model_file(f) is not None), None)
        rows.append((what, repo, found))
    return rows
