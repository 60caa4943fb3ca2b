"""The distillation engine: `train(config, out_dir) -> summary`, `resume(run_dir, overrides)`,
`start_or_continue(config, out_dir)` (--auto-resume), `evaluate(model, loader)`, `load_student(path)`. The
config's schema is `feed_fast.config` (one dataclass per section); the device, precision and process group come
from `feed_fast.runtime`; the methods from `feed_fast.methods`.

A run folder holds config.yaml (the config as given, with the changes resumes made), metrics.jsonl (one line per
epoch), attempts.jsonl (one line per start and end of `feed-fast train` on it), tensorboard/, last.pt, best.pt,
model.pt (the trained student alone: student.pt before), model_ema.pt (its moving average, with train.ema),
teachers.json (the teachers' scores before training: engine/teacher_check.py) and summary.json; sFEED
writes one such folder per generation (gen1/, gen2/, ...) and a summary.json on top. The README's training
section and docs/training.md describe them."""
from ..config import ConfigError, RunConfig, load_config
from .api import load_student, resume, start_or_continue, train
from .evaluate import evaluate

__all__ = ["ConfigError", "RunConfig", "evaluate", "load_config", "load_student", "resume", "start_or_continue",
           "train"]
