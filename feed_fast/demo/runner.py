"""The demo, top to bottom: digits folder -> K teachers -> their ensemble -> per seed, the planned students
(`plan.py`: a CE-only baseline, and KD, FT, pFEED as asked) -> table, verdict, plots, report. Every model is
trained by `feed_fast.engine.train` on the imagefolder loader, exactly as a user's ImageNet run would be; this
module only writes the configs."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..atomic_files import atomic_write_text
from .digits import NUM_CLASSES, prepare_digits
from .plan import StudentSpec, student_plan
from .plots import plot_beta_sweep, plot_students
from .report import format_table, markdown_report
from .results import ENSEMBLE, TEACHER, RunResult
from .settings import DemoSettings, equivalent_command
from .verdict import comparisons, verdict

REPORT_FILE, PLOT_FILE, TABLE_FILE, RESULTS_FILE = "report.md", "val_top1.png", "table.txt", "results.json"
SWEEP_PLOT_FILE = "beta_sweep.png"


class DemoInterrupted(RuntimeError):
    """A run was stopped by SIGINT/SIGTERM (the engine wrote its last.pt); the demo stops there."""


@dataclass
class DemoOutcome:
    run_dir: Path
    results: list
    verdict: str
    total_seconds: float
    report: Path
    plot: Path
    table: str
    sweep_plot: Path | None = None


def engine_config(settings: DemoSettings, data_root: Path, *, model: str, model_kwargs: dict, seed: int,
                  epochs: int, method: str, teachers: list | None = None, beta: float | None = None) -> dict:
    """One run's engine config (the nested dict of a YAML file in configs/); `settings.extra` is applied last."""
    from ..config import apply_overrides

    config = {
        "model": {"name": model, "kwargs": dict(model_kwargs)},
        "teachers": list(teachers or []),
        "method": {"name": method} if beta is None else {"name": method, "beta": beta},
        "data": {"dataset": "imagefolder", "root": str(data_root), "batch_size": settings.batch_size,
                 "eval_batch_size": 256, "image_size": settings.image_size},
        "optim": {"lr": settings.lr, "weight_decay": settings.weight_decay},
        "schedule": {"name": "cosine", "epochs": epochs},
        "train": {"seed": seed, "device": settings.device},
    }
    return apply_overrides(config, [f"{key}={value}" for key, value in settings.extra.items()])


def student_config(settings: DemoSettings, data_root: Path, spec: StudentSpec, teacher_specs: list, seed: int) -> dict:
    """A planned student's engine config: the shared budget, the row's method, its teachers and beta."""
    return engine_config(settings, data_root, model=settings.student_model, model_kwargs=settings.student_kwargs,
                         seed=seed, epochs=settings.epochs, method=spec.method,
                         teachers=teacher_specs[:spec.num_teachers], beta=spec.beta)


def check_configs(settings: DemoSettings) -> None:
    """Validate every run's engine config before any work starts (models, overrides, types, the device) and probe
    that the teachers' feature maps fit the student's, so a mistake fails in a second and not after the teachers
    have trained. Data and checkpoint paths are checked by the engine when each run starts."""
    import torch

    from ..config import RunConfig
    from ..engine.teachers import check_feature_shapes
    from ..models import build_model

    placeholder = Path("digits")
    teacher = {"name": settings.teacher_model, "checkpoint": "teacher.pt", "kwargs": dict(settings.teacher_kwargs)}
    RunConfig.from_dict(engine_config(settings, placeholder, model=settings.teacher_model,
                                      model_kwargs=settings.teacher_kwargs, method="baseline",
                                      seed=settings.first_seed, epochs=settings.epochs_for_teachers),
                        check_paths=False)
    feature_rows = []
    for spec in student_plan(settings):
        config = RunConfig.from_dict(student_config(settings, placeholder, spec, [teacher] * settings.num_teachers,
                                                    settings.first_seed), check_paths=False)
        if spec.uses_features:
            feature_rows.append(config)
    try:
        student = build_model(settings.student_model, NUM_CLASSES, **settings.student_kwargs)
        teacher_model = build_model(settings.teacher_model, NUM_CLASSES, **settings.teacher_kwargs)
    except TypeError as error:
        raise ValueError(f"--teacher-kwargs/--student-kwargs: {error}") from None
    for config in feature_rows[:1]:  # every FEED row shares the student, the teachers' architecture and the pooling
        check_feature_shapes(student, [teacher_model], settings.image_size, torch.device("cpu"),
                             config.method.feature_pool)


def training_rate(history: list) -> float:
    """Images/s over the whole run: every epoch sees the same number of images, so this is the harmonic mean
    of the per-epoch rates (total images / total training time), first epoch's warm-up included."""
    rates = [record["images_per_sec"] for record in history]
    return len(rates) / sum(1.0 / r for r in rates)


def result_from_summary(summary: dict, *, label: str, role: str, model: str, seed: int, seconds: float,
                        beta: float | None = None) -> RunResult:
    per_epoch = [record["val"]["top1"] for record in summary["history"] if "val" in record]
    return RunResult(label=label, role=role, model=model, seed=seed, val_top1=summary["final_top1"],
                     params=summary["student_params"], images_per_sec=training_rate(summary["history"]),
                     top1_per_epoch=per_epoch, seconds=seconds, run_dir=summary["run_dir"], beta=beta)


class StageProgress:
    """Numbered stage lines around the engine's own per-epoch progress."""

    def __init__(self, total_stages: int, write: Callable[[str], None]) -> None:
        self.total, self.done, self.write, self.started = total_stages, 0, write, time.perf_counter()

    def stage(self, text: str) -> float:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        self.write(f"\n[{self.done}/{self.total}] {text}  (demo time so far {elapsed:.0f} s)")
        return time.perf_counter()

    def finished(self, text: str, since: float) -> None:
        self.write(f"    -> {text} in {time.perf_counter() - since:.1f} s")


def _print(text: str) -> None:
    print(text, flush=True)


def run_demo(settings: DemoSettings, *, write: Callable[[str], None] = _print) -> DemoOutcome:
    """Run the whole demo; returns the results and where the report, plot and table were written."""
    import torch

    threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        return _run(settings, write)
    finally:
        torch.set_num_threads(threads)


DEMO_OUTPUTS = ("teachers", "students", REPORT_FILE, RESULTS_FILE)


def refuse_a_used_folder(run_dir: Path) -> None:
    """The engine refuses to train over a run; the demo says so before any work instead of failing at its first
    teacher, and names the way out (the default folder is new for every demo)."""
    used = [name for name in DEMO_OUTPUTS if (run_dir / name).exists()]
    if used:
        raise ValueError(f"--out {str(run_dir)!r} already holds a demo run ({', '.join(used)}): give another --out, "
                         "or delete that folder to run the demo again there")


def _run(settings: DemoSettings, write: Callable[[str], None]) -> DemoOutcome:
    from ..engine import train
    from ..engine.checkpoint import EXPORT

    started = time.perf_counter()
    check_configs(settings)
    plan = student_plan(settings)
    run_dir = settings.run_folder()
    refuse_a_used_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = StageProgress(1 + settings.num_teachers + 1 + len(plan) * settings.seeds, write)

    since = progress.stage("preparing scikit-learn's digits as an ImageFolder of 32x32 JPEGs")
    data = prepare_digits(settings.cache, image_size=settings.image_size, val_fraction=settings.val_fraction,
                          seed=settings.data_seed)
    how = "reused" if data.reused else "built"
    progress.finished(f"{how} {data.root} ({data.counts['train']} train / {data.counts['val']} val images)", since)

    results: list[RunResult] = []
    configs: dict[str, dict] = {}

    def run(label: str, role: str, name: str, config: dict, folder: Path, seed: int,
            beta: float | None = None) -> RunResult:
        if role == TEACHER or seed == settings.first_seed:  # a student's other seeds differ only in train.seed
            configs[f"{label} (seed {seed})"] = config
        begin = time.perf_counter()
        summary = train(config, folder)
        if summary.get("interrupted"):
            raise DemoInterrupted(f"{label} was stopped by {summary.get('stopped_by') or 'a signal'}; its last.pt "
                                  f"is in {folder} (`feed-fast train --resume {folder}` continues it)")
        result = result_from_summary(summary, label=label, role=role, model=name, seed=seed,
                                     seconds=time.perf_counter() - begin, beta=beta)
        results.append(result)
        return result

    teacher_specs = []
    for k, seed in enumerate(settings.teacher_seeds):
        label = f"teacher {k + 1}"
        since = progress.stage(f"{label}: {settings.teacher_model}, seed {seed}, "
                               f"{settings.epochs_for_teachers} epochs, cross-entropy")
        config = engine_config(settings, data.root, model=settings.teacher_model, model_kwargs=settings.teacher_kwargs,
                               seed=seed, epochs=settings.epochs_for_teachers, method="baseline")
        result = run(label, TEACHER, settings.teacher_model, config, run_dir / "teachers" / f"teacher-{k + 1}", seed)
        teacher_specs.append({"name": settings.teacher_model, "checkpoint": str(Path(result.run_dir) / EXPORT),
                              "kwargs": dict(settings.teacher_kwargs)})
        progress.finished(f"val top-1 {result.val_top1:.2f}%", since)

    since = progress.stage(f"the teachers' ensemble (mean of {settings.num_teachers} softmax outputs)")
    results.append(_ensemble_result(settings, data.root, teacher_specs, results))
    progress.finished(f"val top-1 {results[-1].val_top1:.2f}%", since)

    # Seed by seed, so that a stopped demo leaves complete sets of rows to pair.
    for seed in settings.student_seeds:
        for spec in plan:
            since = progress.stage(f"{spec.label}: {settings.student_model}, seed {seed}, {settings.epochs} epochs, "
                                   f"{spec.what}")
            config = student_config(settings, data.root, spec, teacher_specs, seed)
            result = run(spec.label, spec.role, settings.student_model, config,
                         run_dir / "students" / f"seed-{seed}" / spec.folder, seed, beta=spec.beta)
            progress.finished(f"val top-1 {result.val_top1:.2f}%", since)

    return _write_outputs(settings, run_dir, results, configs, started, write)


def _ensemble_result(settings: DemoSettings, data_root: Path, teacher_specs: list, results: list) -> RunResult:
    from ..runtime import resolve_device
    from .ensemble import evaluate_ensemble

    metrics = evaluate_ensemble([spec["checkpoint"] for spec in teacher_specs], str(data_root),
                                image_size=settings.image_size, batch_size=256,
                                device=resolve_device(settings.device))
    teachers = [r for r in results if r.role == TEACHER]
    return RunResult(label="teachers' ensemble", role=ENSEMBLE, model=f"{len(teachers)} x {settings.teacher_model}",
                     seed=None, val_top1=metrics["top1"], params=sum(r.params for r in teachers))


def _write_outputs(settings, run_dir, results, configs, started, write) -> DemoOutcome:
    from ..environment import environment_summary
    from ..runtime import resolve_device

    table = format_table(results)
    plot = plot_students(results, run_dir / PLOT_FILE)
    sweep_plot = plot_beta_sweep(results, run_dir / SWEEP_PLOT_FILE) if settings.beta_sweep else None
    text_verdict = verdict(results)
    total = time.perf_counter() - started
    info = environment_summary(resolve_device(settings.device))
    config = {"demo": settings.to_dict(),
              "engine runs (each student's first seed; its other seeds differ only in train.seed)": configs}
    report = atomic_write_text(markdown_report(results, config=config, version_info=info, total_seconds=total,
                                               plot_name=PLOT_FILE, command=equivalent_command(settings),
                                               sweep_plot_name=SWEEP_PLOT_FILE if sweep_plot else None),
                               run_dir / REPORT_FILE)
    atomic_write_text(table + "\n", run_dir / TABLE_FILE)
    atomic_write_text(json.dumps(
        {"results": [r.to_dict() for r in results], "comparisons": [c.to_dict() for c in comparisons(results)],
         "verdict": text_verdict, "total_seconds": total, "versions": info, "settings": settings.to_dict()},
        indent=1) + "\n", run_dir / RESULTS_FILE)
    write("\n" + table + "\n\n" + text_verdict + "\n")
    write(f"Total time {total:.1f} s on {info['device']}.")
    write(f"Report: {report}\nPlot:   {plot}" + (f"\nSweep:  {sweep_plot}" if sweep_plot else ""))
    return DemoOutcome(run_dir, results, text_verdict, total, report, plot, table, sweep_plot)
