"""Keep every test to itself, and the demo run that several test modules read.

Before anything is collected, ``TAG2MASK_CACHE`` and ``TAG2MASK_WEIGHTS`` point at a temporary folder of this
session, so session-scoped fixtures (set up before any function-scoped one) never see the user's folders; each
test then gets fresh folders of its own. At the end of the session the user's cache folder
(``~/.cache/tag2mask``) and the entries of the working directory are compared with what they were at the start:
any change fails the session with the paths that changed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

USER_CACHE = Path.home() / ".cache" / "tag2mask"  # where tag2mask writes when TAG2MASK_CACHE is unset
_ENV = ("TAG2MASK_CACHE", "TAG2MASK_WEIGHTS")
_state: dict[str, object] = {}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (empty when the folder is absent)."""
    out: dict[str, tuple[int, int]] = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            with contextlib.suppress(OSError):
                st = path.lstat()
                out[str(path.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    if folder.is_dir() and not out:
        out["."] = (0, 0)  # an empty folder that exists is still different from no folder
    return out


def _changes(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def pytest_configure(config: pytest.Config) -> None:
    base = Path(tempfile.mkdtemp(prefix="tag2mask-tests-"))
    _state.update(base=base, env={k: os.environ.get(k) for k in _ENV}, user_cache=_snapshot(USER_CACHE),
                  cwd=Path.cwd(), cwd_entries=set(os.listdir(Path.cwd())))
    os.environ["TAG2MASK_CACHE"] = str(base / "cache")
    os.environ["TAG2MASK_WEIGHTS"] = str(base / "weights")
    try:  # hypothesis would keep its example database and caches in ./.hypothesis
        from hypothesis import settings
        from hypothesis.configuration import set_hypothesis_home_dir

        set_hypothesis_home_dir(str(base / "hypothesis"))
        settings.register_profile("tag2mask-tests", database=None)
        settings.load_profile("tag2mask-tests")
    except ImportError:
        pass


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "base" not in _state:
        return
    problems = []
    changed = _changes(_state["user_cache"], _snapshot(USER_CACHE))  # type: ignore[arg-type]
    if changed:
        problems.append(f"the tests changed the user's cache folder {USER_CACHE}: {', '.join(changed[:10])}")
    cwd: Path = _state["cwd"]  # type: ignore[assignment]
    new = sorted(set(os.listdir(cwd)) - _state["cwd_entries"] - {".pytest_cache"})  # type: ignore[operator]
    if new:
        problems.append(f"the tests wrote into the working directory {cwd}: {', '.join(new)}")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            for line in problems:
                reporter.write_line(f"ISOLATION FAILURE: {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config: pytest.Config) -> None:
    base = _state.pop("base", None)
    if base is None:
        return
    for key, value in _state["env"].items():  # type: ignore[attr-defined]
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(base, ignore_errors=True)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _isolated_tag2mask_folders(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    base: Path = tmp_path_factory.mktemp("tag2mask_env")
    monkeypatch.setenv("TAG2MASK_CACHE", str(base / "cache"))
    monkeypatch.setenv("TAG2MASK_WEIGHTS", str(base / "weights"))
    yield


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests (small tensors are faster so, notably on a busy machine); the
    session's thread count is restored afterwards. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``tag2mask demo`` run once per session: (run folder, what it printed). Tests may add to the folder
    (e.g. ``stage2/``) but must not change what the demo wrote."""
    import io

    from tag2mask.cli import main

    out = tmp_path_factory.mktemp("demo") / "demo"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["demo", "--out", str(out)]) == 0
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def prompt_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny CLIP, 8 synthetic images and their masks as coarse seeds, and overrides for 6 quick iterations."""
    from tag2mask.data import make_synthetic_dataset, open_dataset
    from tag2mask.models.tiny import tiny_clip
    from tag2mask.testing import save_openai_state_dict
    from tag2mask.io import write_label_png

    base = tmp_path_factory.mktemp("train")
    root = make_synthetic_dataset(base / "syn", n_train=8, n_val=1, size=(48, 64), seed=4)
    save_openai_state_dict(tiny_clip(seed=0, image_size=32), base / "clip.pt")
    seeds = base / "seeds"
    ds = open_dataset("synthetic", root, "train")
    for image_id in ds.ids:  # the ground truth stands in for coarse seeds
        write_label_png(seeds / f"{image_id}.png", ds.load_mask(image_id))
    small = ["scale_low=40", "scale_high=48", "short_thresh=32", "crop_size=32"]
    overrides = [f"data.root={root}", f"models.clip={base / 'clip.pt'}", "runtime.device=cpu", "runtime.num_workers=0"]
    for task in ("cls", "seg"):
        overrides += [f"train.{task}.augment.{s}" for s in small]
        overrides += [f"train.{task}.batch_size=4", f"train.{task}.max_iter=6", f"train.{task}.warmup_iter=1",
                      f"train.{task}.lr=0.5"]
    return {"base": base, "root": root, "seeds": seeds, "overrides": overrides}


@pytest.fixture(scope="session")
def random_vit_b16(tmp_path_factory: pytest.TempPathFactory) -> torch.nn.Module:
    """The random-weight CLIP ViT-B/16 (OpenAI key layout) that the reference cases ``gradcam_*`` and ``clipes_*``
    were computed with: ``tests/data/make_random_clip.py`` recreates it exactly (checked by digest)."""
    import importlib.util

    from open_clip.model import build_model_from_openai_state_dict

    data = Path(__file__).parent / "data"
    spec = importlib.util.spec_from_file_location("make_random_clip", data / "make_random_clip.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path_factory.mktemp("clip")
    path = module.ensure(str(folder / "random_vit_b16.pt"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    shutil.rmtree(folder)  # ~300 MB, not needed once loaded
    return build_model_from_openai_state_dict(state, quick_gelu=True, cast_dtype=None).float().eval()
