"""What a resumed run may change in its recorded config (`feed-fast train --resume DIR --set KEY=VALUE`, and
`--auto-resume` with a CONFIG and --set that differ from the run's config.yaml): the settings that do not change
the math of the steps already taken. Everything else is refused in one line naming the keys.

- `data.root` (a moved dataset), `data.skip_corrupt`, `data.num_threads`, `data.download`,
  `data.eval_batch_size` (evaluation only), `train.log_every`, `train.progress`, `train.eval_every`,
  `train.checkpoint_minutes`, `train.stop_signal`, `train.check_teachers`: where the data is read from, how fast,
  what is printed and checked, and when files are written.
- `schedule.epochs`, longer only, where the lr of every step does not depend on the epoch count: `multistep`
  and `constant` (their warm-up included); not `cosine`, whose curve is stretched over the whole run, and not
  for sFEED (each generation's final student teaches the next)."""
from __future__ import annotations

from typing import Any

from .parse import ConfigError
from .schema import RunConfig

RESUMABLE = ("data.root", "data.skip_corrupt", "data.num_threads", "data.download", "data.eval_batch_size",
             "train.log_every", "train.progress", "train.eval_every", "train.checkpoint_minutes",
             "train.stop_signal", "train.check_teachers")
LONGER_ONLY = "schedule.epochs"
EXTENSIBLE_SCHEDULES = ("multistep", "constant")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config dict; lists of mappings by index (`teachers.0.name`), other lists whole."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    if isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        out = {}
        for i, item in enumerate(node):
            out.update(flatten(item, f"{prefix}.{i}"))
        return out
    return {prefix: node}


def config_changes(recorded: RunConfig, given: RunConfig) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (recorded value, given value)} for every key whose value differs (a key one side lacks, such as
    a teacher added, counts with None on that side)."""
    old, new = flatten(recorded.to_dict()), flatten(given.to_dict())
    keys = [*old, *(key for key in new if key not in old)]  # in the config's own order
    return {key: (old.get(key), new.get(key)) for key in keys if old.get(key) != new.get(key)}


def refused_changes(changes: dict[str, tuple[Any, Any]], recorded: RunConfig) -> dict[str, str]:
    """{key: why} for the changes a resume may not make (empty: all allowed)."""
    refused = {}
    for key, (old, new) in changes.items():
        if key in RESUMABLE:
            continue
        if key == LONGER_ONLY:
            why = epochs_refusal(old, new, recorded)
            if why:
                refused[key] = why
            continue
        refused[key] = "changes the math of the steps taken"
    return refused


def epochs_refusal(old: int, new: int, recorded: RunConfig) -> str | None:
    if new < old:
        return "only a longer schedule can continue a run"
    if recorded.schedule.name not in EXTENSIBLE_SCHEDULES:
        return (f"a {recorded.schedule.name} schedule's lr depends on the epoch count (only "
                f"{' and '.join(EXTENSIBLE_SCHEDULES)} schedules can be made longer)")
    if recorded.method.name == "sfeed":
        return "sFEED's next generation learns from the previous one's final student"
    return None


def describe_change(key: str, old: Any, new: Any) -> str:
    return f"{key} ({_short(old)} -> {_short(new)})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_resume_changes(changes: dict[str, tuple[Any, Any]], recorded: RunConfig, *, where: str) -> None:
    """Raise ConfigError, one line, when `changes` holds a key a resume may not change. `where` says what differs
    from the run's config.yaml (e.g. "--set" or "CONFIG and --set")."""
    refused = refused_changes(changes, recorded)
    if not refused:
        return
    listed = "; ".join(f"{describe_change(key, *changes[key])}: {why}" for key, why in refused.items())
    raise ConfigError(f"{where} differs from the run's recorded config in {listed}. A resume may change only "
                      f"{', '.join(RESUMABLE)} and make schedule.epochs longer ({' or '.join(EXTENSIBLE_SCHEDULES)}"
                      " schedules); start a new run in another --out folder (or --overwrite) to change the rest")
