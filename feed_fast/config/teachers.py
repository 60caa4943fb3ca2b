"""Setting teachers from the command line, and teachers a method does not use.

- `--set teachers.N.checkpoint=FILE` over a config entry that names `weights` replaces them, and
  `--set teachers.N.weights=SPEC` replaces a `checkpoint` (a teacher takes one of the two); both in one mapping,
  or both set by --set, stay an error.
- `--set teachers.N.KEY=...` with N the current number of teachers adds one (parse.py's rule for any list):
  it needs `name` and `checkpoint` or `weights` (and `kwargs` where the model takes some).
- `feed-fast train --teacher NAME=SOURCE` (repeatable) sets the whole list, before any --set: SOURCE is a
  checkpoint when it is a file here or reads as a path (a `/`, or a checkpoint's file suffix), otherwise a
  weights name the model zoo knows (`ResNet34_Weights.IMAGENET1K_V1`, `DEFAULT`, timm's `pretrained`).
- A method that uses no configured teachers (baseline) drops them, saying so in one line: the run's config.yaml
  then records none."""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .parse import ConfigError, apply_overrides, parse_override

if TYPE_CHECKING:
    from .schema import RunConfig

SOURCES = ("checkpoint", "weights")  # a teacher takes exactly one
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".ckpt", ".safetensors")


def apply_run_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    """`apply_overrides`, one --set at a time: a teacher's `checkpoint` or `weights` set by one replaces the other
    source its entry held, unless an earlier --set of this command gave that one (both given stays an error)."""
    merged, set_here = raw, set()  # set_here: (teacher index, source) given by a --set of this command
    for text in overrides:
        keys, value = parse_override(text)
        merged = apply_overrides(merged, [text])
        if not (len(keys) == 3 and keys[0] == "teachers" and keys[1].isdigit() and keys[2] in SOURCES):
            continue
        index, chosen = int(keys[1]), keys[2]
        other = SOURCES[1 - SOURCES.index(chosen)]
        set_here.add((index, chosen))
        teachers = merged.get("teachers")
        entry = teachers[index] if isinstance(teachers, list) else None  # a list: apply_overrides indexed it
        if (value is not None and (index, other) not in set_here and isinstance(entry, dict)
                and entry.get(other) is not None):
            del entry[other]
    return merged


def teacher_source(value: str) -> str:
    """Which key a `--teacher NAME=VALUE` sets: "checkpoint" for a file here or what reads as a path, else
    "weights"."""
    path = Path(value)
    looks_like_a_path = "/" in value or "\\" in value or path.suffix.lower() in CHECKPOINT_SUFFIXES
    return "checkpoint" if path.is_file() or looks_like_a_path else "weights"


def teacher_flags_override(flags: Sequence[str]) -> str:
    """The --set that `--teacher NAME=SOURCE ...` stands for: `teachers=[{name: ..., checkpoint|weights: ...}]`."""
    entries = []
    for flag in flags:
        name, sep, source = flag.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ConfigError(f"--teacher expects NAME=CHECKPOINT_OR_WEIGHTS (e.g. resnet34=runs/r34/model.pt or "
                              f"resnet34=ResNet34_Weights.IMAGENET1K_V1), got {flag!r}")
        source = source.strip()
        entries.append({"name": name.strip(), teacher_source(source): source})
    return "teachers=" + json.dumps(entries)  # JSON is YAML: read back by parse_override like any --set value


def both_sources_hint(key: str) -> str:
    return (f"remove one of them (a `--set {key}.checkpoint=FILE` alone over a config entry that names weights "
            "replaces them, and the reverse)")


def without_unused_teachers(cfg: RunConfig, *, say: bool) -> RunConfig:
    """`cfg` without teachers when its method uses none of those configured (baseline): one line on stderr when
    `say` (rank 0 of a run) and there were some."""
    from ..methods import METHODS

    if METHODS[cfg.method.name].uses_given_teachers or not cfg.teachers:
        return cfg
    if say:
        names = ", ".join(t.name for t in cfg.teachers)
        print(f"feed-fast train: method {cfg.method.name} uses no teachers: the {len(cfg.teachers)} configured "
              f"({names}) are ignored and left out of the run's config.yaml", file=sys.stderr, flush=True)
    return replace(cfg, teachers=[])
