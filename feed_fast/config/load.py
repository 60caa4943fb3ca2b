"""Where a run's config comes from: a YAML file, or one shipped in feed_fast.configs, by name."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import yaml

from .parse import ConfigError
from .schema import RunConfig


def bundled_config(name: str) -> Path | None:
    """The YAML of that name shipped in the package (the repository's configs/, as feed_fast.configs)."""
    from importlib import resources

    stem = Path(name).name
    candidate = resources.files("feed_fast.configs") / (stem if stem.endswith(".yaml") else f"{stem}.yaml")
    return Path(str(candidate)) if candidate.is_file() else None


def load_config(path: str | os.PathLike, overrides: Iterable[str] = (), *, check_paths: bool = True) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        # Not a file here: maybe a config shipped with the package, named as in configs/.
        path = bundled_config(str(path)) or path
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist (nor is it one of the configs shipped "
                          "in feed_fast.configs)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at top level, got {type(raw).__name__}")
    return RunConfig.from_dict(raw, overrides, check_paths=check_paths)
