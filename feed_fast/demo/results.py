"""What the demo measured: one `RunResult` per trained model (plus the teachers' ensemble). Student runs that
share a label (same method, same beta) over several seeds form one row of the table."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

TEACHER, ENSEMBLE = "teacher", "ensemble"
BASELINE, KD, FT, PFEED = "baseline", "kd", "ft", "pfeed"
STUDENT_ROLES = (BASELINE, KD, FT, PFEED)
ROLES = (TEACHER, ENSEMBLE, *STUDENT_ROLES)


def is_finite_percentage(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 100.0


@dataclass
class RunResult:
    """One row of the demo's results. `val_top1` and `top1_per_epoch` are percentages in [0, 100]; `beta` is the
    weight of the FEED term for FT and pFEED students, None otherwise."""

    label: str
    role: str
    model: str
    seed: int | None
    val_top1: float
    params: int
    images_per_sec: float | None = None  # training throughput; None for the ensemble (nothing trained)
    top1_per_epoch: list = field(default_factory=list)
    seconds: float | None = None
    run_dir: str | None = None
    beta: float | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        for value in [self.val_top1, *self.top1_per_epoch]:
            if not is_finite_percentage(value):
                raise ValueError(f"{self.label}: accuracies must be percentages in [0, 100], got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def by_role(results: Sequence[RunResult], role: str) -> list[RunResult]:
    return [r for r in results if r.role == role]


def student_rows(results: Sequence[RunResult]) -> list[list[RunResult]]:
    """The students' runs grouped by label (one group per table row, its runs in seed order), in the order the
    labels first appear, the baseline first."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        if r.role in STUDENT_ROLES:
            groups.setdefault(r.label, []).append(r)
    rows = sorted(groups.values(), key=lambda runs: runs[0].role != BASELINE)  # stable: the rest keep their order
    return [sorted(runs, key=lambda r: r.seed) for runs in rows]


def top1_by_seed(runs: Sequence[RunResult]) -> dict[int, float]:
    by_seed = {}
    for r in runs:
        if r.seed in by_seed:
            raise ValueError(f"{r.label}: two runs with seed {r.seed}")
        by_seed[r.seed] = r.val_top1
    return by_seed
