"""Which students the demo trains for each seed, and how each one is configured. Every row shares the student
architecture, epochs, batch, lr and seeds; only the method, its teachers and (for FEED rows) beta differ.

- baseline: cross-entropy only (the row every other row is paired with);
- kd: Hinton KD from the mean of all teachers' softened logits, plus cross-entropy (engine method `kd`);
- ft: Factor-Transfer-style FEED from the first teacher alone (engine method `pfeed` with K=1);
- pfeed: FEED from all K teachers, one row per beta (one beta, or the sweep)."""
from __future__ import annotations

from dataclasses import dataclass

from .results import BASELINE, FT, KD, PFEED
from .settings import DemoSettings, format_beta


@dataclass(frozen=True)
class StudentSpec:
    role: str
    label: str  # the table row; runs with the same label over several seeds are one row
    method: str  # the engine's method name
    num_teachers: int  # the first n teachers (0: none)
    beta: float | None  # weight of the FEED term; None for rows without one
    folder: str  # under students/seed-N/
    what: str  # the progress line's description of the loss

    @property
    def uses_features(self) -> bool:
        return self.beta is not None


def student_plan(settings: DemoSettings) -> list[StudentSpec]:
    k = settings.num_teachers
    plan = [StudentSpec(BASELINE, "baseline student (CE only)", "baseline", 0, None, "baseline", "cross-entropy only")]
    if "kd" in settings.compare:
        plan.append(StudentSpec(KD, f"KD student ({k} teachers' logits)", "kd", k, None, "kd",
                                f"cross-entropy + Hinton KD from the mean of {k} teachers' softened logits"))
    if "ft" in settings.compare:
        plan.append(StudentSpec(FT, f"FT student (FEED K=1 from teacher 1, β={format_beta(settings.beta)})", "pfeed", 1,
                                settings.beta, "ft", "cross-entropy + FEED from teacher 1 alone"))
    sweep = len(settings.pfeed_betas) > 1
    for beta in settings.pfeed_betas:
        plan.append(StudentSpec(PFEED, f"pFEED student (K={k}, β={format_beta(beta)})", "pfeed", k, beta,
                                f"pfeed-beta{format_beta(beta)}" if sweep else "pfeed",
                                f"cross-entropy + {format_beta(beta)} x FEED from {k} teachers"))
    return plan
