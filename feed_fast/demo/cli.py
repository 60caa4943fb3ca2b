"""`feed-fast demo`: the end-to-end distillation demo on scikit-learn's digits (what `make demo` runs)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .settings import DEFAULT_SETTINGS, DEVICES, FLAGS, DemoSettings


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


def register(subparsers) -> None:
    d = DEFAULT_SETTINGS
    parser = subparsers.add_parser(
        "demo",
        help="distill scikit-learn's digits end to end (3 teachers, a baseline and a pFEED student)",
        description=(
            "Turns scikit-learn's bundled digits into an ImageFolder of 32x32 JPEGs (once, cached), trains "
            f"{d.num_teachers} teachers, a CE-only baseline student and a pFEED student through the "
            "feed-fast engine, prints a table and writes a plot and a markdown report into the run folder."
        ),
    )

    def add(name: str, **options) -> None:
        """A flag for DemoSettings field `name`, spelled as in FLAGS (the table the report's command line uses)."""
        parser.add_argument(FLAGS[name], dest=name, **options)

    add("seeds", type=_positive_int, default=d.seeds,
        help="repeat the two students over this many seeds and report mean and spread "
             f"(default {d.seeds})")
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
        help=f"weight of the FEED term (default {d.beta})")
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
        help="override an engine config key for every run (repeatable)")
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
