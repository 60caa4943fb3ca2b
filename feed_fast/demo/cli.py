"""`feed-fast demo`: the end-to-end distillation demo on scikit-learn's digits (what `make demo` runs)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .settings import (
    COMPARABLE,
    DEFAULT_BETA_SWEEP,
    DEFAULT_SETTINGS,
    DEVICES,
    FLAGS,
    DemoSettings,
    canonical_betas,
    canonical_compare,
    format_beta,
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _mapping(text: str) -> dict:
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping such as '{{widths: [8, 16, 32]}}', got {text!r}")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def _compare(text: str) -> tuple:
    if text == "all":
        return COMPARABLE
    if text == "none":
        return ()
    try:
        return canonical_compare([name.strip() for name in text.split(",") if name.strip()])
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("compare: ")) from None


def _betas(text: str) -> tuple:
    try:
        values = [float(word) for word in text.split(",") if word.strip()]
        if not values:
            raise ValueError("no beta given")
        return canonical_betas(values)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive betas such as '50,500', got {text!r} "
                                         f"({str(error).removeprefix('beta_sweep: ')})") from None


def register(subparsers) -> None:
    d = DEFAULT_SETTINGS
    parser = subparsers.add_parser(
        "demo",
        help="distill scikit-learn's digits end to end (teachers, a baseline and a pFEED student; KD and FT with "
             "--compare all; a beta sweep with --beta-sweep)",
        description=(
            "Turns scikit-learn's bundled digits into an ImageFolder of 32x32 JPEGs (once, cached), trains "
            f"{d.num_teachers} teachers, then per seed a CE-only baseline student and the student rows --compare "
            "asks for (default: pFEED; 'all': KD from the teachers' ensemble logits, FT from the first teacher, "
            "pFEED from all teachers), all with the same epochs, batch, lr and seeds, through the feed-fast "
            "engine. Prints a table and a verdict (each row paired with the baseline of the same seed) and writes "
            "plots and a markdown report into the run folder."
        ),
    )

    def add(name: str, **options) -> None:
        """A flag for DemoSettings field `name`, spelled as in FLAGS (the table the report's command line uses)."""
        parser.add_argument(FLAGS[name], dest=name, **options)

    add("compare", type=_compare, default=d.compare, metavar="ROWS",
        help="student rows trained beside the CE-only baseline (always trained): 'all', 'none', or "
             f"comma-separated names among {', '.join(COMPARABLE)} (kd: Hinton KD from the teachers' ensemble "
             "logits; ft: FEED from the first teacher alone, K=1; pfeed: FEED from all teachers). "
             f"Default {','.join(d.compare)}, sized for `make demo` (minutes on 2 CPU cores); 'all' adds "
             "a KD and an FT student per seed")
    add("beta_sweep", type=_betas, nargs="?", const=DEFAULT_BETA_SWEEP, default=d.beta_sweep, metavar="BETAS",
        help="train one pFEED row per beta (comma-separated; alone: "
             f"{','.join(format_beta(b) for b in DEFAULT_BETA_SWEEP)}) instead of one at --beta, and plot val "
             "top-1 against beta beside the baseline (beta_sweep.png)")
    add("seeds", type=_positive_int, default=d.seeds,
        help="train every student row over this many seeds and report mean, sample std and the paired "
             f"difference to the baseline of the same seed (default {d.seeds})")
    add("epochs", type=_positive_int, default=d.epochs,
        help=f"epochs of each student (and of the teachers unless --teacher-epochs; "
             f"default {d.epochs})")
    add("teacher_epochs", type=_positive_int, default=None,
        help="epochs of each teacher (default: --epochs)")
    add("num_teachers", type=_positive_int, default=d.num_teachers,
        help=f"number of teachers (default {d.num_teachers})")
    add("teacher_model", default=d.teacher_model,
        help=f"teachers' architecture (default {d.teacher_model})")
    add("student_model", default=d.student_model,
        help=f"students' architecture (default {d.student_model})")
    add("teacher_kwargs", type=_mapping, default={}, metavar="MAPPING",
        help="keyword arguments of the teachers' build_model, e.g. '{widths: [32, 64, 128]}'")
    add("student_kwargs", type=_mapping, default={}, metavar="MAPPING",
        help="keyword arguments of the students' build_model, e.g. '{widths: [8, 16, 32]}'")
    add("batch_size", type=_positive_int, default=d.batch_size,
        help=f"default {d.batch_size}")
    add("lr", type=float, default=d.lr, help=f"default {d.lr}")
    add("beta", type=float, default=d.beta,
        help=f"weight of the FEED term of the FT and pFEED rows (default {format_beta(d.beta)}, FT's official "
             "value)")
    add("first_seed", type=int, default=d.first_seed,
        help=f"seed of the first student run (default {d.first_seed})")
    add("device", default=d.device, choices=DEVICES,
        help="default auto: the GPU when there is one, else the CPU")
    add("threads", type=_positive_int, default=None,
        help="torch CPU threads (default: torch's, one per core); on a busy machine with few "
             "cores, 1 avoids OpenMP threads spinning against other processes")
    add("out", type=Path, default=None,
        help="run folder (default runs/demo-<date>-<time> in the current directory)")
    add("cache", type=Path, default=None,
        help="where the digits ImageFolder is built once and reused "
             "(default $FEED_FAST_CACHE, else ~/.cache/feed-fast)")
    add("extra", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
        help="override an engine config key for every run (repeatable; method.name, method.beta and teachers "
             "are set per row)")
    parser.set_defaults(func=run_command)


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    values = {name: getattr(args, name) for name in FLAGS}
    values["extra"] = dict(values["extra"])  # --set pairs
    return DemoSettings(**values)


def run_command(args: argparse.Namespace) -> int:
    from .runner import DemoInterrupted, run_demo

    try:
        settings = settings_from_args(args)
        run_demo(settings)
    except DemoInterrupted as stopped:
        print(f"feed-fast demo: {stopped}", file=sys.stderr)
        return 130
    except ValueError as error:  # the engine's ConfigError is a ValueError: bad model names, --set keys, ...
        print(f"feed-fast demo: {error}", file=sys.stderr)
        return 2
    return 0
