"""Packaging: kernels/ and loaders/ ship inside the feed_fast namespace, from the editable install and from a
built wheel, and the project claims no generic top-level import name (another PyPI project owns `kernels`)."""

from __future__ import annotations

import configparser
import importlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Top-level dirs that ship under another name: repo dir -> path inside the wheel.
RENAMED_PACKAGES = {"kernels": "feed_fast/kernels", "loaders": "feed_fast/loaders", "configs": "feed_fast/configs"}
# What a build must never see: environments, caches, stale build output, run artifacts.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".benchmarks",
    "runs",
    ".cache",
    "*.pt",
)


def source_files(top: str) -> list[str]:
    """Every .py file under a package dir of the repo, as its path inside the wheel."""
    prefix = RENAMED_PACKAGES.get(top, top)
    root = REPO_ROOT / top
    return sorted(
        f"{prefix}/{path.relative_to(root).as_posix()}"
        for path in root.rglob("*.py")
        if "__pycache__" not in path.parts
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built from a clean copy of the repo (an in-tree build would reuse a stale build/ dir,
    and would race with other builds of the same checkout)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_SOURCE)
    out = work / "dist"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "-q",
            "-w",
            str(out),
            str(source),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    (path,) = out.glob("feed_fast-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def dist_info_file(archive: zipfile.ZipFile, name: str) -> str:
    (member,) = [n for n in archive.namelist() if n.endswith(f".dist-info/{name}") and n.count("/") == 1]
    return archive.read(member).decode()


# ----------------------------------------------------------------------------------------------------
# The installed (editable) package
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top", sorted(RENAMED_PACKAGES))
def test_subpackage_imports_inside_the_feed_fast_namespace(top):
    module = importlib.import_module(f"feed_fast.{top}")
    assert Path(module.__file__).resolve() == (REPO_ROOT / top / "__init__.py").resolve()


def test_no_top_level_kernels_or_loaders_module_from_this_project(tmp_path):
    """Checked from a neutral directory: run from the repo root, Python would find kernels/ on sys.path[0]."""
    probe = (
        "import importlib.util, json\n"
        "found = {}\n"
        "for name in ('kernels', 'loaders'):\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    found[name] = None if spec is None else (spec.origin or str(list(spec.submodule_search_locations)))\n"
        "import feed_fast.kernels, feed_fast.loaders\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for name, origin in json.loads(result.stdout).items():
        assert origin is None or str(REPO_ROOT) not in origin, (
            f"top-level `{name}` resolves into the repo: {origin}"
        )


# ----------------------------------------------------------------------------------------------------
# The wheel
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top", ["kernels", "loaders", "configs", "feed_fast"])
def test_wheel_contains_every_python_file(wheel, top):
    """Every .py under kernels/, loaders/ and feed_fast/ (all subpackages) lands in the wheel: a
    subpackage missing from pyproject's explicit package list fails here."""
    names = set(wheel.namelist())
    expected = source_files(top)
    assert expected, f"no .py files found under {top}/"
    missing = [f for f in expected if f not in names]
    assert not missing, f"missing from the wheel (add the package to [tool.setuptools] packages?): {missing}"


def test_wheel_ships_every_config_as_feed_fast_configs(wheel):
    """configs/*.yaml ship inside the package, so `feed-fast train NAME` works from an installed wheel."""
    names = set(wheel.namelist())
    configs = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml"))
    assert configs
    missing = [c for c in configs if f"feed_fast/configs/{c}" not in names]
    assert not missing, f"configs missing from the wheel: {missing}"


def test_wheel_has_no_top_level_kernels_or_loaders(wheel):
    tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    assert "kernels" not in tops and "loaders" not in tops
    assert not [t for t in tops if not (t == "feed_fast" or t.endswith((".dist-info", ".data")))], tops
    assert dist_info_file(wheel, "top_level.txt").split() == ["feed_fast"]


def test_wheel_declares_the_feed_fast_console_script(wheel):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(dist_info_file(wheel, "entry_points.txt"))
    assert entry_points.get("console_scripts", "feed-fast").strip() == "feed_fast.cli:main"
    module_name, _, attribute = entry_points.get("console_scripts", "feed-fast").strip().partition(":")
    assert "def main(" in wheel.read(module_name.replace(".", "/") + ".py").decode()
    assert attribute == "main"


def test_wheel_metadata_names_the_extras(wheel):
    metadata = dist_info_file(wheel, "METADATA")
    assert "Provides-Extra: dali" in metadata and "Provides-Extra: dev" in metadata
    assert "Requires-Dist: torch" in metadata


def test_installed_console_script_runs(tmp_path):
    script = Path(sys.executable).with_name("feed-fast")
    if not script.exists():
        pytest.skip(f"no installed console script next to {sys.executable} (package not pip-installed)")
    result = subprocess.run(
        [str(script), "--help"], cwd=tmp_path, check=False, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: feed-fast")
