"""The demo's knobs, with defaults sized for a few minutes on 2 CPU cores (README: measured times)."""
from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..runtime import DEVICES

# The student rows `compare` can ask for beside the CE-only baseline (always trained: every row is paired with it).
COMPARABLE = ("kd", "ft", "pfeed")
DEFAULT_COMPARE = ("pfeed",)
DEFAULT_BETA_SWEEP = (15.0, 50.0, 150.0, 500.0, 1500.0)  # log-spaced around FT's 500, a factor ~3 apart
ROW_KEYS = ("method.name", "method.beta")  # engine keys the demo sets per row (and `teachers`)


@dataclass
class DemoSettings:
    """Everything the demo run depends on. `epochs`, `batch_size` and `lr` are the same for every student (and the
    teachers unless `teacher_epochs` is given); student seed s is `first_seed + s` for s in range(`seeds`).
    `compare` names the student rows trained beside the baseline (kd, ft, pfeed); a non-empty `beta_sweep`
    trains one pFEED row per beta listed there (instead of one at `beta`)."""

    epochs: int = 10
    teacher_epochs: int | None = None
    seeds: int = 1
    first_seed: int = 0
    compare: tuple = DEFAULT_COMPARE
    beta_sweep: tuple = ()
    num_teachers: int = 3
    teacher_model: str = "resnet20"
    student_model: str = "resnet8"
    teacher_kwargs: dict = field(default_factory=dict)  # build_model keyword arguments, e.g. {"widths": [8, 16, 32]}
    student_kwargs: dict = field(default_factory=dict)
    batch_size: int = 32
    lr: float = 0.05
    weight_decay: float = 5e-4
    beta: float = 500.0
    image_size: int = 32
    val_fraction: float = 0.2
    data_seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch's CPU threads; None leaves torch's default (one per core)
    out: Path | None = None
    cache: Path | None = None
    extra: dict = field(default_factory=dict)  # engine config overrides (dotted keys), applied to every run

    def __post_init__(self) -> None:
        for name in ("epochs", "seeds", "num_teachers", "batch_size", "image_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")
        if self.teacher_epochs is not None and (not isinstance(self.teacher_epochs, int) or self.teacher_epochs < 1):
            raise ValueError(f"teacher_epochs must be a positive integer, got {self.teacher_epochs!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta!r}")
        for key in self.extra:
            if key in ROW_KEYS or key.split(".")[0].split("[")[0] == "teachers":
                # An override would silently make the rows alike, each still labelled as its own method.
                raise ValueError(f"extra: {key} is set per row by the demo; use --compare, --beta or --beta-sweep")
        self.compare = canonical_compare(self.compare)
        self.beta_sweep = canonical_betas(self.beta_sweep)
        if self.out is not None:
            self.out = Path(self.out)
        if self.cache is not None:
            self.cache = Path(self.cache)

    @property
    def epochs_for_teachers(self) -> int:
        return self.teacher_epochs if self.teacher_epochs is not None else self.epochs

    @property
    def student_seeds(self) -> list[int]:
        return [self.first_seed + s for s in range(self.seeds)]

    @property
    def teacher_seeds(self) -> list[int]:
        # Kept apart from the students' seeds so a teacher never shares an initialisation stream with them.
        return [self.first_seed + 100 + k for k in range(self.num_teachers)]

    @property
    def pfeed_betas(self) -> tuple:
        """The betas of the pFEED rows: the sweep when there is one, else `beta` when pfeed is compared."""
        if self.beta_sweep:
            return self.beta_sweep
        return (self.beta,) if "pfeed" in self.compare else ()

    def run_folder(self) -> Path:
        if self.out is not None:
            return self.out
        return Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["out"] = str(self.out) if self.out is not None else None
        data["cache"] = str(self.cache) if self.cache is not None else None
        data["compare"], data["beta_sweep"] = list(self.compare), list(self.beta_sweep)
        return data


def canonical_compare(names) -> tuple:
    """`names` as a tuple in COMPARABLE's order, without repeats; unknown names are refused."""
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in COMPARABLE]
    if unknown:
        raise ValueError(f"compare: unknown student row {unknown[0]!r}; expected some of {', '.join(COMPARABLE)} "
                         "(or 'all'); the baseline is always trained")
    return tuple(n for n in COMPARABLE if n in names)


def canonical_betas(values) -> tuple:
    """Sorted, without repeats; each a positive number (beta 0 is the baseline row, and the sweep plots on a
    log axis)."""
    betas = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise ValueError(f"beta_sweep: every beta must be a positive finite number (beta 0 is the baseline), "
                             f"got {value!r}")
        betas.append(float(value))
    return tuple(sorted(set(betas)))


DEFAULT_SETTINGS = DemoSettings()

FLAGS = {  # DemoSettings field -> the `feed-fast demo` flag that sets it (cli.py registers the flags by this table)
    "seeds": "--seeds", "epochs": "--epochs", "teacher_epochs": "--teacher-epochs", "num_teachers": "--teachers",
    "teacher_model": "--teacher-model", "student_model": "--student-model", "teacher_kwargs": "--teacher-kwargs",
    "student_kwargs": "--student-kwargs", "batch_size": "--batch-size", "lr": "--lr", "beta": "--beta",
    "first_seed": "--seed", "device": "--device", "threads": "--threads", "out": "--out", "cache": "--cache",
    "extra": "--set", "compare": "--compare", "beta_sweep": "--beta-sweep",
}


def format_beta(beta: float) -> str:
    """15.0 -> '15', 0.25 -> '0.25': short, and read back exactly."""
    return str(int(beta)) if float(beta).is_integer() else repr(float(beta))


def flag_value(name: str, value) -> str:
    """How a setting is written on the command line (the inverse of cli.py's parsers)."""
    if name == "compare":
        return "all" if tuple(value) == COMPARABLE else ",".join(value) or "none"
    if name == "beta_sweep":
        return ",".join(format_beta(beta) for beta in value)
    return json.dumps(value) if isinstance(value, dict) else str(value)


def equivalent_command(settings: DemoSettings) -> str:
    """The `feed-fast demo` command line that reproduces `settings` (only what differs from the defaults)."""
    words = ["feed-fast", "demo"]
    without_flag = []
    for name, value in settings.to_dict().items():
        default = getattr(DEFAULT_SETTINGS, name)
        default = str(default) if isinstance(default, Path) else list(default) if isinstance(default, tuple) else default
        if value == default or (name == "extra" and not value):
            continue
        if name == "extra":
            for key, item in value.items():
                words += [FLAGS[name], shlex.quote(f"{key}={item}")]
        elif name in FLAGS:
            words += [FLAGS[name], shlex.quote(flag_value(name, value))]
        else:
            without_flag.append(f"{name}={value!r}")
    command = " ".join(words)
    if without_flag:
        command += "  # plus settings that have no flag: " + ", ".join(without_flag)
    return command
