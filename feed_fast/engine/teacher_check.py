"""`train.check_teachers` (on by default): before distilling, every configured teacher and their ensemble (the mean
of their softmax outputs) are scored on the val split, so that a wrong checkpoint, an untrained export or a
teacher trained with another normalisation, image size or class order is seen at the start, not hours later.

They are scored by `evaluate_many` over the val loader the student is evaluated on: at the run's image size,
normalisation and precision, what the teachers see when distilling; under torchrun each process scores its
shard and the sums are added up. Once per run: rank 0 writes the result to the run folder's teachers.json, and a
resumed run reads it back instead of scoring again (every process must agree to skip). The result goes into the
start block, epoch 0's record in metrics.jsonl (and so last.pt's history; key `teacher_check`, also in
TensorBoard) and summary.json (`teacher_check`).

A teacher gets a one-line warning naming its entry when its top-1 is
- near chance: below chance + min(chance, (100 - chance) / 4), i.e. twice chance with 5 classes or more (2% on
  CIFAR-100, 0.2% on ImageNet); with fewer, a quarter of the way from chance to 100%; or
- far below the others: under half the best teacher's top-1.

Not scored: methods without teachers (baseline), and sFEED's later generations, whose teacher is the previous
generation's final student: its val top-1 on the same split is already the last record of that generation's
metrics.jsonl."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..atomic_files import atomic_write_text
from ..config import RunConfig
from ..runtime import Runtime
from ..runtime.distributed import agree
from .data import Loaders
from .evaluate import evaluate_many

TEACHERS_FILE = "teachers.json"


@dataclass(frozen=True)
class TeacherCheck:
    record: dict  # what teachers.json, metrics.jsonl and summary.json hold
    scored_now: bool  # False: read back from teachers.json (a resumed run)

    def lines(self) -> list[str]:
        """The start block's lines: one per teacher, then the ensemble."""
        record = self.record
        lines = [f"  teacher {t['index']}  {t['name']} ({t['source']}): val top-1 {t['top1']:.2f}%"
                 for t in record["teachers"]]
        when = "" if self.scored_now else f"; checked at the run's start ({TEACHERS_FILE})"
        lines.append(f"  ensemble   mean of the teachers' softmax outputs: val top-1 {record['ensemble']['top1']:.2f}% "
                     f"({record['samples']} val images, chance {record['chance_top1']:.2f}%{when})")
        return lines

    def warnings(self) -> list[str]:
        return [f"feed-fast train: warning: {line}" for line in self.record["warnings"]]


def check_teachers(cfg: RunConfig, runtime: Runtime, loaders: Loaders, teachers: Sequence[nn.Module],
                   run_dir: Path) -> TeacherCheck | None:
    """Score the configured `teachers` (as loaded, in config order) once per run; None when there are none or
    `train.check_teachers` is false. Every process calls it at the same point (the scores are summed over them)."""
    if not teachers or not cfg.train.check_teachers:
        return None
    path = Path(run_dir) / TEACHERS_FILE
    recorded = read_check(path)
    if not agree([int(recorded is None)], runtime.dist)[0]:  # every process has it: a resumed run
        return TeacherCheck(recorded, scored_now=False)
    models = [teacher.to(runtime.device, memory_format=runtime.memory_format) for teacher in teachers]
    scores = evaluate_many(models, loaders.val, ensemble=True, autocast=runtime.precision.autocast(),
                           dist=runtime.dist)
    num_classes = loaders.train.num_classes
    entries = [{"index": i, "name": spec.name, "source": spec.checkpoint or spec.weights,
                **{k: score[k] for k in ("top1", "top5", "loss")}}
               for i, (spec, score) in enumerate(zip(cfg.teachers, scores))]
    record = {"teachers": entries, "ensemble": {k: scores[-1][k] for k in ("top1", "top5", "loss")},
              "samples": scores[-1]["samples"], "num_classes": num_classes, "chance_top1": 100.0 / num_classes,
              "warnings": weak_teachers(entries, num_classes)}
    if runtime.is_main:
        atomic_write_text(json.dumps(record, indent=1) + "\n", path)
    return TeacherCheck(record, scored_now=True)


def read_check(path: Path) -> dict | None:
    """teachers.json's record, or None when there is none (or it cannot be read: then the teachers are scored
    again)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "teachers" in record and "ensemble" in record else None


def near_chance(num_classes: int) -> float:
    """The top-1 (percent) under which a teacher counts as near chance."""
    chance = 100.0 / num_classes
    return chance + min(chance, (100.0 - chance) / 4)


def weak_teachers(entries: list[dict], num_classes: int) -> list[str]:
    """One line per teacher near chance or under half the best teacher's top-1 (see the module docstring)."""
    chance, best = 100.0 / num_classes, max(entries, key=lambda t: t["top1"])
    lines = []
    for t in entries:
        who = f"teachers.{t['index']} ({t['name']}, {t['source']})"
        if t["top1"] < near_chance(num_classes):
            lines.append(f"{who} scores val top-1 {t['top1']:.2f}%, near chance ({chance:.2f}% for {num_classes} "
                         "classes): an untrained model, another model's checkpoint, or one trained with another class "
                         "order, normalisation or image size than this run's? It would teach nothing")
        elif t["top1"] < best["top1"] / 2:
            lines.append(f"{who} scores val top-1 {t['top1']:.2f}%, under half the best teacher's (teachers."
                         f"{best['index']}: {best['top1']:.2f}%): the wrong checkpoint, or one trained with another "
                         "normalisation or image size than this run's?")
    return lines


def print_warnings(check: TeacherCheck | None) -> None:
    """The check's warnings on stderr (rank 0), whatever train.progress says."""
    for line in check.warnings() if check is not None else []:
        print(line, file=sys.stderr, flush=True)
