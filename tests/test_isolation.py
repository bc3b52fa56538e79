"""The suite keeps to itself: session-scoped fixtures already use temporary caches, and a test that writes
into the user's cache folder or the working directory fails the session (the guard in ``conftest.py``).

Each case runs a small inner pytest session in a subprocess with this project's ``conftest.py`` and ``HOME``
pointing at a fresh folder, so the real user's folders are never at stake.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text(encoding="utf-8")

SESSION_FIXTURE_WRITES_CACHE = '''
import pytest
from tag2mask.data.base import default_cache_dir

@pytest.fixture(scope="session")
def early():
    folder = default_cache_dir() / "labels"   # resolved before any function-scoped fixture runs
    folder.mkdir(parents=True)
    (folder / "x.json").write_text("{}")
    return folder

def test_uses_session_fixture(early):
    assert early.is_file() is False and (early / "x.json").is_file()
'''

WRITES_USER_CACHE = '''
from pathlib import Path

def test_writes_into_home():
    folder = Path.home() / ".cache" / "tag2mask"
    folder.mkdir(parents=True)
    (folder / "stray.json").write_text("{}")
'''

WRITES_CWD = '''
from pathlib import Path

def test_writes_into_cwd():
    Path("segment-out").mkdir()
'''


def _inner_session(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, test_source: str) -> tuple[pytest.RunResult, Path]:
    home = pytester.path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("TAG2MASK_CACHE", raising=False)
    monkeypatch.delenv("TAG2MASK_WEIGHTS", raising=False)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=test_source)
    return pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider"), home


def test_session_fixtures_never_reach_the_user_cache(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result, home = _inner_session(pytester, monkeypatch, SESSION_FIXTURE_WRITES_CACHE)
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    assert not (home / ".cache").exists()


def test_a_test_that_writes_into_the_user_cache_fails_the_session(pytester: pytest.Pytester,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    result, home = _inner_session(pytester, monkeypatch, WRITES_USER_CACHE)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*ISOLATION FAILURE: the tests changed the user's cache folder*stray.json*"])


def test_a_test_that_writes_into_the_working_directory_fails_the_session(pytester: pytest.Pytester,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    result, _home = _inner_session(pytester, monkeypatch, WRITES_CWD)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*ISOLATION FAILURE: the tests wrote into the working directory*segment-out*"])
