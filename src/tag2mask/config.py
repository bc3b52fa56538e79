"""Typed configuration: dataclasses, YAML presets shipped in the package, dotted overrides, and their checks.

A config is a tree of dataclasses (:class:`Config` at the root). Presets (``voc``, ``coco``, ``demo``) are
YAML files in ``tag2mask/presets/`` that set every field explicitly, each value with the SPEC.md section it
comes from. Users change values with dotted overrides, ``seeds.fine.bg_power=0.8``; values are parsed as YAML
scalars or lists and checked against the field's type.

The pipeline runs some stages twice (SPEC §0): once for the classification task (giving the *coarse* seeds)
and once for the segmentation task (giving the *fine* seeds). Sections that differ between the two passes
therefore have two sub-sections: ``prompts.cls`` / ``prompts.seg``, ``train.cls`` / ``train.seg``,
``caa.cls`` / ``caa.seg``, ``seeds.coarse`` / ``seeds.fine``.

:func:`tag2mask.hashing.config_hash` gives a stable short hash of any sub-config, and
:func:`tag2mask.stages.graph.stage_hashes` the hash of every stage (its sections and its inputs' hashes): the
stages use them to cache results and to skip finished work. No hyper-parameter is ever encoded in a folder name.

Why one module of about 650 lines: every section's dataclass (each field with the SPEC section it comes from),
the parsing of overrides against those types, and the checks of the values are read together whenever a setting
is added or changed; split, a reader would need three files open for one key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from tag2mask.errors import ConfigError

PRESETS = ("voc", "coco", "demo", "voc-clip-es", "coco-clip-es", "demo-clip-es")
_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


# --------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Which dataset, where, which splits, and the names CLIP reads (SPEC §2.2, §5.4)."""

    dataset: Literal["voc", "coco", "folder", "synthetic"] = "voc"
    root: str = "data/VOC2012"
    train_split: str = "train_aug"
    eval_split: str = "train_aug"
    label_source: Literal["masks", "xml", "instances"] = "masks"
    on_error: Literal["raise", "skip"] = "raise"
    fg_names: list[str] = field(default_factory=list)
    bg_names: list[str] = field(default_factory=list)


@dataclass
class ModelsConfig:
    """Frozen foundation models (SPEC §1.1, §7.1). Names resolve in ``$TAG2MASK_WEIGHTS``; paths load as is."""

    clip: str = "ViT-B/16"
    clip_arch: str = ""
    """The OpenCLIP model name of an OpenCLIP checkpoint in ``clip`` (e.g. ``ViT-B-16``); empty for OpenAI files and
    Hugging Face ``CLIPModel`` folders or repository names, whose layout is recognised."""
    sam_type: str = "vit_h"
    sam: str = "sam_vit_h_4b8939.pth"


@dataclass
class SuperpixelsConfig:
    """SAM quasi-superpixel generator, pattern ``l2_nmsf_s1_rsw3`` (SPEC §7.2)."""

    # sam: segment_anything's SAM (models.sam a .pth file or name), or transformers' SamModel (models.sam a transformers
    # folder or Hugging Face repository id); sam-hq, sam2 (SAM 2.1), edgetam: transformers (models.sam their folder or
    # repository, default the official one); slic, felzenszwalb: CPU methods without SAM (README "Mask sources")
    source: Literal["sam", "sam-hq", "sam2", "edgetam", "slic", "felzenszwalb"] = "sam"
    import_dir: str = ""  # a folder of SAM-style annotations made elsewhere, used instead of any source
    preset: str = "l2_nmsf_s1_rsw3"
    points_per_side: int = 32
    points_per_batch: int = 256
    crop_n_layers: int = 1
    crop_n_points_downscale_factor: int = 2
    crop_overlap_ratio: float = 512 / 1500
    crop_nms_thresh: float = 0.7
    pred_iou_thresh: float = 0.86
    stability_score_thresh: float = 0.92
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_mask_region_area: int = 100
    score_thresh_offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.1])
    score_nms_offset: list[float] = field(default_factory=lambda: [0.0, 0.0, 1.0])
    stability_score_bias: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    hierarchy_recall_thresh: Union[float, None] = 0.3
    # working size: an image whose longer side is larger is made into quasi-superpixels downscaled to this size
    # (aspect kept; 0 = never); the seeds are then made at that size and enlarged to the image's. VOC and COCO
    # images (at most 500 and 640 pixels) are never downscaled.
    max_side: int = 1024


@dataclass
class PromptConfig:
    """One task's CoOp prompt learner (SPEC §2.3)."""

    n_ctx: int = 16
    class_specific: bool = False
    name_position: Literal["end", "front"] = "end"
    ctx_std: float = 0.015
    seed: str = "真"
    bg_prompts: Literal["named", "nameless"] = "named"


@dataclass
class PromptsConfig:
    cls: PromptConfig = field(default_factory=PromptConfig)
    seg: PromptConfig = field(
        default_factory=lambda: PromptConfig(
            class_specific=True, name_position="front", ctx_std=0.0125, seed="机", bg_prompts="nameless"
        )
    )


@dataclass
class AugmentConfig:
    """Training augmentation (SPEC §5.3)."""

    color_jitter: bool = True
    scale_low: int = 288
    scale_high: int = 480
    short_thresh: int = 224
    crop_size: int = 224
    flip_p: float = 0.5


@dataclass
class TrainTaskConfig:
    """One task's prompt training (SPEC §5.1, §5.2, §4.3)."""

    loss: Literal["mcl", "bce", "bce_manual", "bce_auto", "cal", "ce", "ce_manual", "ce_auto"] = "mcl"
    loss_scale: float = 1.0
    loss_bias: float = -20.0
    max_iter: int = 1800
    warmup_iter: int = 500
    warmup_lr: float = 1e-5
    warmup_mode: Literal["constant", "linear"] = "constant"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 16
    sub_iter: int = 1
    amp: bool = True
    seed: int = 0
    online_labels: bool = False
    checkpoint: Union[Literal["final"], int] = "final"
    resume_every: int = 50
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    cls: TrainTaskConfig = field(default_factory=TrainTaskConfig)
    seg: TrainTaskConfig = field(
        default_factory=lambda: TrainTaskConfig(loss="cal", max_iter=17000, online_labels=True)
    )


@dataclass
class CamsConfig:
    """CAM inference (SPEC §1.2, §3, §5.6)."""

    align: int = 16
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    softmax: Literal["reference", "clean"] = "reference"
    att_layers: int = 8
    save_att: bool = False
    # working size: an image whose longer side is larger goes through CLIP downscaled to this size (aspect kept,
    # then aligned; 0 = never), which bounds the patch grid and the attention matrix. VOC and COCO: never.
    max_side: int = 1024
    # images whose CLIP input has one size go through the network together, up to this many (a GPU's speed-up;
    # on a CPU no gain). 1 = one at a time, bit-exact with the reference; more: the same CAMs to float32 rounding.
    images_per_batch: int = 1


@dataclass
class CAATaskConfig:
    """Class-aware attention affinity for one task's CAMs (SPEC §6)."""

    enabled: bool = True
    sinkhorn_iters: int = 1
    power: int = 2
    box_thresh: float = 0.4
    propagate: Literal["score", "cam"] = "score"
    boxes: Literal["reference", "inclusive"] = "reference"


@dataclass
class CAAConfig:
    cls: CAATaskConfig = field(default_factory=CAATaskConfig)
    seg: CAATaskConfig = field(default_factory=lambda: CAATaskConfig(box_thresh=0.5, propagate="cam"))


@dataclass
class SeedTaskConfig:
    """Seeds from one task's CAMs (SPEC §8, §9)."""

    method: Literal["sams", "argmax", "crf"] = "sams"
    norm_first: Union[bool, Literal["double_norm", "no_norm", "gamma_softmax"]] = True
    gather: Literal["mean", "sum"] = "mean"
    bg_method: Literal["pow", "thresh", "alpha_bg", "no_bg"] = "pow"
    bg_power: float = 0.7
    uncovered: Literal["background", "argmax"] = "background"
    crf: str = "clip_es_crf,no_pp"


@dataclass
class SeedsConfig:
    coarse: SeedTaskConfig = field(default_factory=lambda: SeedTaskConfig(bg_power=0.6))
    fine: SeedTaskConfig = field(default_factory=SeedTaskConfig)


@dataclass
class EvaluateConfig:
    """Seed evaluation protocol (SPEC §9)."""

    ignore_index: int = 255
    argmax_bg_powers: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0])


@dataclass
class ClipEsConfig:
    """The training-free mode (CLIP-ES, CONTEXT §2; :mod:`tag2mask.cam.clip_es`): fixed prompts, no training."""

    templates: list[str] = field(default_factory=lambda: ["a clean origami {}."])
    """Prompt templates, each with one ``{}`` for the class name; several are averaged."""
    box_thresh: float = 0.4
    """CAA box threshold: CLIP-ES uses 0.4 on VOC and 0.7 on COCO."""
    boxes: Literal["reference", "inclusive"] = "reference"
    """``reference``: CLIP-ES's boxes, clipped so that the last row and column are never in (its quirk)."""
    sinkhorn_iters: int = 3
    power: int = 2
    pos_embed_f16: bool = True
    """Round the resized positional embedding to float16, as CLIP-ES does even in float32."""
    bg_power: float = 1.0
    """α of CLIP-ES's argmax seeds, ``bg = (1 − max fg)^α`` (CLIP-ES reports the better of 1 and 2 on GT)."""


@dataclass
class RuntimeConfig:
    """Where and how the run executes; never changes results."""

    device: str = "auto"
    num_workers: int = 4
    cache_dir: str = ""
    amp_dtype: Literal["bfloat16", "float16"] = "bfloat16"
    """The half-precision type of mixed precision (``train.*.amp`` on CUDA); bfloat16 needs no loss scaling and
    falls back to float16 (with a GradScaler) on GPUs without it."""
    process_group_timeout: int = 1800
    deterministic: bool = False
    """``torch.use_deterministic_algorithms`` (warn-only) and no cuDNN autotuning: CUDA results repeat bit for bit
    where torch has deterministic kernels (e.g. ``index_add_``), at some speed; CPU results repeat anyway."""
    """Seconds a rank waits in a collective under torchrun before it stops with an error naming itself (instead of
    hanging for ever when another rank died or hangs)."""


@dataclass
class Config:
    """The whole pipeline's configuration."""

    preset: str = "voc"
    pipeline: Literal["fma", "clip_es"] = "fma"
    """``fma``: the trained coarse-to-fine method; ``clip_es``: training-free (CLIP-ES's CAMs, then seeds)."""
    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    superpixels: SuperpixelsConfig = field(default_factory=SuperpixelsConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cams: CamsConfig = field(default_factory=CamsConfig)
    caa: CAAConfig = field(default_factory=CAAConfig)
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    clip_es: ClipEsConfig = field(default_factory=ClipEsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def section(self, dotted: str) -> Any:
        """The sub-config at a dotted path, e.g. ``config.section("seeds.fine")``."""
        node: Any = self
        for part in dotted.split(".") if dotted else []:
            if not dataclasses.is_dataclass(node) or part not in _field_names(type(node)):
                raise ConfigError(f"no config section {dotted!r}")
            node = getattr(node, part)
        return node

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=120)


# --------------------------------------------------------------------------------------------------------------
# Building and checking
# --------------------------------------------------------------------------------------------------------------


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    names = {type(None): "null", int: "integer", float: "number", bool: "true/false", str: "string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int → float only)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        for allowed in typing.get_args(tp):
            if value == allowed and type(value) is type(allowed):
                return value
        raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}")
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r} (quote it in YAML)")
    raise TypeError(f"unsupported config type {tp!r} at {key}")


def _unknown_key(cls: type, name: str, prefix: str) -> ConfigError:
    known = _field_names(cls)
    where = prefix.rstrip(".") or "the top level"
    hint = difflib.get_close_matches(name, known, n=3)
    # also look one level down: ``seeds.bg_power`` → ``seeds.fine.bg_power``
    hints_below = []
    for f in dataclasses.fields(cls):
        sub = _hints(cls)[f.name]
        if dataclasses.is_dataclass(sub) and name in _field_names(sub):
            hints_below.append(f"{prefix}{f.name}.{name}")
    msg = f"unknown config key '{prefix}{name}' in {where}"
    if hints_below:
        msg += f"; did you mean {' or '.join(hints_below)}?"
    elif hint:
        msg += f"; did you mean {', '.join(prefix + h for h in hint)}?"
    else:
        msg += f"; valid keys: {', '.join(known)}"
    return ConfigError(msg)


def update_dataclass(node: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested dict of values to a dataclass instance in place, checking keys and types (one error naming
    the key, ``prefix`` + its name, for an unknown key or a wrong type). Used for the config and stage II's recipes."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = _hints(type(node))
    for name, value in values.items():
        if name not in hints:
            raise _unknown_key(type(node), str(name), prefix)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            update_dataclass(getattr(node, name), value, f"{prefix}{name}.")
        else:
            setattr(node, name, _coerce(value, tp, f"{prefix}{name}"))


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _hints(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += _leaf_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def value_at(config: Config, dotted: str) -> Any:
    """The value of the dotted key ``dotted`` (``"seeds.fine.bg_power"``, or a section such as ``"caa.cls"``)."""
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def leaf_keys() -> list[str]:
    """Every dotted leaf key of :class:`Config` (what a complete preset must set)."""
    return _leaf_keys(Config)


def preset_path(name: str) -> Path:
    """The YAML file of a shipped preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return Path(str(resources.files("tag2mask") / "presets" / f"{name}.yaml"))


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b.c=value`` into the dotted key and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. seeds.fine.bg_power=0.8")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e.__class__.__name__})") from None
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


_KEY_LINE = re.compile(r"^(\s*)([A-Za-z_]\w*):(.*)$")


def _key_comments(text: str) -> dict[str, str]:
    """``{dotted key: its end-of-line comment}`` of a YAML config file written like the presets."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        m = _KEY_LINE.match(line)
        if not m:  # a flow list continued on the next line may carry its key's comment
            if stack and "  #" in line and not line.lstrip().startswith(("-", "#")):
                out.setdefault(".".join(k for _, k in stack), line.split("  #", 1)[1].strip())
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        rest = m.group(3)
        if "  #" in rest and rest.count('"') % 2 == 0:
            out[".".join(k for _, k in stack)] = rest.split("  #", 1)[1].strip()
    return out


def annotated_yaml(config: Config, source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    """:meth:`Config.to_yaml` with the comments of the preset (or YAML file) it came from kept on their keys (they
    say where each value comes from), and a header naming the file and the overrides."""
    path = Path(source) if str(source).endswith((".yaml", ".yml")) else preset_path(str(source))
    comments = _key_comments(path.read_text(encoding="utf-8")) if path.is_file() else {}
    changed = {parse_override(o)[0] for o in overrides}
    header = [f"# tag2mask config: {path.name} (comments: where each of its values comes from, from {path})"]
    if overrides:
        header.append(f"# changed on the command line: {' '.join(overrides)}")
    lines: list[str] = []
    stack: list[tuple[int, str]] = []
    for line in config.to_yaml().splitlines():
        m = _KEY_LINE.match(line)
        if m:
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, m.group(2)))
            key = ".".join(k for _, k in stack)
            note = comments.get(key)
            if key in changed:
                note = "set on the command line" + (f" (the file's note: {note})" if note else "")
            if note:
                line = f"{line}  # {note}"
        lines.append(line)
    return "\n".join(header + lines) + "\n"


def load_config(preset: str | Path = "voc", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a :class:`Config` from a preset name (or a YAML file path) and ``key=value`` overrides."""
    path = Path(preset) if str(preset).endswith((".yaml", ".yml")) else preset_path(str(preset))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    config = Config()
    update_dataclass(config, values)
    for item in overrides:
        key, value = parse_override(item)
        if key == "superpixels.preset":
            _apply_superpixel_preset(config, value)
        update_dataclass(config, _nest(key, value))
    _check(config)
    return config


def apply_overrides(node: Any, overrides: list[str] | tuple[str, ...], prefix: str = "") -> Any:
    """Apply ``key=value`` overrides to any config dataclass ``node`` in place (types checked) and return it."""
    for item in overrides:
        key, value = parse_override(item)
        update_dataclass(node, _nest(key, value), prefix)
    return node


def _apply_superpixel_preset(config: Config, name: Any) -> None:
    """``superpixels.preset=NAME`` loads that generator pattern's values into the other ``superpixels`` keys."""
    from tag2mask.superpixels.presets import PRESETS as SP_PRESETS

    if name not in SP_PRESETS:
        raise ConfigError(f"superpixels.preset: unknown pattern {name!r}; patterns: {', '.join(SP_PRESETS)}")
    update_dataclass(config.superpixels, dict(SP_PRESETS[name]), "superpixels.")


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a :class:`Config` from :meth:`Config.to_dict` output (e.g. a run's ``config.yaml``)."""
    config = Config()
    update_dataclass(config, values)
    _check(config)
    return config


def _check(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    _check_ranges(config)  # first: the checks below divide by some of these values
    sp = config.superpixels
    for name in ("score_thresh_offset", "score_nms_offset", "stability_score_bias"):
        if len(getattr(sp, name)) != 3:
            raise ConfigError(f"superpixels.{name} needs 3 values (levels 0, 1, 2)")
    for task in ("cls", "seg"):
        t: TrainTaskConfig = getattr(config.train, task)
        if t.batch_size % t.sub_iter:
            raise ConfigError(f"train.{task}.batch_size ({t.batch_size}) must be divisible by sub_iter ({t.sub_iter})")
        if not 0 <= t.warmup_iter <= t.max_iter:
            raise ConfigError(f"train.{task}.warmup_iter must lie in 0..max_iter")
        if t.checkpoint != "final" and not 0 < t.checkpoint <= t.max_iter:
            raise ConfigError(f"train.{task}.checkpoint must be 'final' or an iteration in 1..max_iter")
        a = t.augment
        if not a.short_thresh <= a.scale_low <= a.scale_high or a.crop_size > a.short_thresh:
            raise ConfigError(f"train.{task}.augment: need crop_size <= short_thresh <= scale_low <= scale_high")
    if config.cams.align < 1:
        raise ConfigError("cams.align must be positive")
    _check_sam_file(config.models.sam_type, config.models.sam)
    _check_clip_arch(config.models.clip_arch)


def _check_clip_arch(arch: str) -> None:
    """ConfigError when ``models.clip_arch`` is set but not one of open_clip's built-in model names."""
    if not arch:
        return
    from tag2mask.models.weights import open_clip_arch_names

    names = open_clip_arch_names()
    if names is not None and arch not in names:
        close = difflib.get_close_matches(arch, names, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else " (open_clip.list_models() lists them)."
        raise ConfigError(f"models.clip_arch={arch} is not an OpenCLIP model name{hint} Leave it empty for OpenAI "
                          "files and Hugging Face CLIPModel folders.")


def _check_sam_file(sam_type: str, sam: str) -> None:
    """ConfigError when ``models.sam`` names an official SAM file (or name) of another type than ``sam_type``."""
    from tag2mask.models.weights import known_weight

    official = known_weight(Path(sam).name, "sam") if sam not in ("", "default") else None
    if official is not None and sam_type != "tiny" and official.name != sam_type:
        own = known_weight(sam_type, "sam")
        fix = f"models.sam={own.filename}" if own is not None else "models.sam=default"
        raise ConfigError(f"models.sam={sam} is the {official.name} file but models.sam_type={sam_type}: set the "
                          f"file of {sam_type} too ({fix}), or models.sam_type={official.name}")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_ranges(config: Config) -> None:
    """Every value in its allowed range, so that nothing absurd reaches the work: one error naming key and range."""

    def need(ok: bool, key: str, allowed: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"{key}={value!r} is out of range: {allowed}")

    for task in ("cls", "seg"):
        t: TrainTaskConfig = getattr(config.train, task)
        for name in ("max_iter", "batch_size", "sub_iter", "resume_every"):
            need(getattr(t, name) > 0, f"train.{task}.{name}", "a positive integer", getattr(t, name))
        need(_finite(t.lr) and t.lr > 0, f"train.{task}.lr", "a finite number > 0", t.lr)
        need(_finite(t.warmup_lr) and t.warmup_lr >= 0, f"train.{task}.warmup_lr", "a finite number >= 0", t.warmup_lr)
        need(_finite(t.momentum) and 0 <= t.momentum < 1, f"train.{task}.momentum", "0 <= momentum < 1", t.momentum)
        need(_finite(t.weight_decay) and t.weight_decay >= 0, f"train.{task}.weight_decay", "a finite number >= 0",
             t.weight_decay)
        need(t.augment.crop_size > 0, f"train.{task}.augment.crop_size", "a positive integer", t.augment.crop_size)
        p = getattr(config.prompts, task)
        need(p.n_ctx > 0, f"prompts.{task}.n_ctx", "a positive integer", p.n_ctx)
        need(_finite(p.ctx_std) and p.ctx_std >= 0, f"prompts.{task}.ctx_std", "a finite number >= 0", p.ctx_std)
        c = getattr(config.caa, task)
        need(c.sinkhorn_iters > 0, f"caa.{task}.sinkhorn_iters", "a positive integer", c.sinkhorn_iters)
        need(c.power > 0, f"caa.{task}.power", "a positive integer", c.power)
        need(_finite(c.box_thresh) and 0 <= c.box_thresh <= 1, f"caa.{task}.box_thresh", "0 <= box_thresh <= 1",
             c.box_thresh)
    for which in ("coarse", "fine"):
        s = getattr(config.seeds, which)
        need(_finite(s.bg_power) and s.bg_power >= 0, f"seeds.{which}.bg_power", "a finite number >= 0", s.bg_power)
        need(s.norm_first != "gamma_softmax", f"seeds.{which}.norm_first",
             "true, false, double_norm or no_norm (gamma_softmax is not implemented: SPEC §8 does not define it)",
             s.norm_first)
        need(s.bg_method != "thresh", f"seeds.{which}.bg_method",
             "pow, alpha_bg or no_bg (thresh needs a constant background score, which has no setting yet)",
             s.bg_method)
    need(config.cams.att_layers > 0, "cams.att_layers", "a positive integer", config.cams.att_layers)
    need(1 <= config.cams.images_per_batch <= 256, "cams.images_per_batch", "an integer in 1..256",
         config.cams.images_per_batch)
    e = config.clip_es
    need(len(e.templates) > 0 and all(t.count("{}") == 1 for t in e.templates), "clip_es.templates",
         "a non-empty list of templates, each with one {} for the class name", e.templates)
    need(_finite(e.box_thresh) and 0 <= e.box_thresh <= 1, "clip_es.box_thresh", "0 <= box_thresh <= 1", e.box_thresh)
    need(e.sinkhorn_iters > 0, "clip_es.sinkhorn_iters", "a positive integer", e.sinkhorn_iters)
    need(e.power > 0, "clip_es.power", "a positive integer", e.power)
    need(_finite(e.bg_power) and e.bg_power >= 0, "clip_es.bg_power", "a finite number >= 0", e.bg_power)
    for key in ("cams.max_side", "superpixels.max_side"):
        value = value_at(config, key)
        need(value == 0 or value >= 64, key, "0 (never downscale) or at least 64 pixels", value)
    need(len(config.cams.scales) > 0 and all(_finite(v) and v > 0 for v in config.cams.scales), "cams.scales",
         "a non-empty list of positive numbers", config.cams.scales)
    powers = config.evaluate.argmax_bg_powers
    need(len(powers) > 0 and all(_finite(v) and v >= 0 for v in powers), "evaluate.argmax_bg_powers",
         "a non-empty list of finite numbers >= 0", powers)
    need(config.runtime.process_group_timeout > 0, "runtime.process_group_timeout", "a positive number of seconds",
         config.runtime.process_group_timeout)
    need(config.runtime.num_workers >= 0, "runtime.num_workers", "an integer >= 0", config.runtime.num_workers)
    need(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", config.runtime.device) is not None, "runtime.device",
         "auto, cpu, cuda, cuda:N or mps", config.runtime.device)
