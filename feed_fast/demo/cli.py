"""`feed-fast demo`: the end-to-end distillation demo on scikit-learn's digits (what `make demo` runs)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .settings import DEVICES, DemoSettings

DEFAULTS = DemoSettings()


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
    parser = subparsers.add_parser(
        "demo",
        help="distill scikit-learn's digits end to end (3 teachers, a baseline and a pFEED student)",
        description=(
            "Turns scikit-learn's bundled digits into an ImageFolder of 32x32 JPEGs (once, cached), trains "
            f"{DEFAULTS.num_teachers} teachers, a CE-only baseline student and a pFEED student through the "
            "feed-fast engine, prints a table and writes a plot and a markdown report into the run folder."
        ),
    )
    parser.add_argument("--seeds", type=_positive_int, default=DEFAULTS.seeds,
                        help="repeat the two students over this many seeds and report mean and spread "
                             f"(default {DEFAULTS.seeds})")
    parser.add_argument("--epochs", type=_positive_int, default=DEFAULTS.epochs,
                        help=f"epochs of each student (and of the teachers unless --teacher-epochs; "
                             f"default {DEFAULTS.epochs})")
    parser.add_argument("--teacher-epochs", type=_positive_int, default=None,
                        help="epochs of each teacher (default: --epochs)")
    parser.add_argument("--teachers", type=_positive_int, default=DEFAULTS.num_teachers, dest="num_teachers",
                        help=f"number of teachers (default {DEFAULTS.num_teachers})")
    parser.add_argument("--teacher-model", default=DEFAULTS.teacher_model,
                        help=f"teachers' architecture (default {DEFAULTS.teacher_model})")
    parser.add_argument("--student-model", default=DEFAULTS.student_model,
                        help=f"students' architecture (default {DEFAULTS.student_model})")
    parser.add_argument("--teacher-kwargs", type=_mapping, default={}, metavar="MAPPING",
                        help="keyword arguments of the teachers' build_model, e.g. '{widths: [32, 64, 128]}'")
    parser.add_argument("--student-kwargs", type=_mapping, default={}, metavar="MAPPING",
                        help="keyword arguments of the students' build_model, e.g. '{widths: [8, 16, 32]}'")
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULTS.batch_size,
                        help=f"default {DEFAULTS.batch_size}")
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr, help=f"default {DEFAULTS.lr}")
    parser.add_argument("--beta", type=float, default=DEFAULTS.beta,
                        help=f"weight of the FEED term (default {DEFAULTS.beta})")
    parser.add_argument("--seed", type=int, default=DEFAULTS.first_seed, dest="first_seed",
                        help=f"seed of the first student run (default {DEFAULTS.first_seed})")
    parser.add_argument("--device", default=DEFAULTS.device, choices=DEVICES,
                        help="default auto: the GPU when there is one, else the CPU")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch CPU threads (default: torch's, one per core); on a busy machine with few "
                             "cores, 1 avoids OpenMP threads spinning against other processes")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder (default runs/demo-<date>-<time> in the current directory)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where the digits ImageFolder is built once and reused "
                             "(default $FEED_FAST_CACHE, else ~/.cache/feed-fast)")
    parser.add_argument("--set", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="override an engine config key for every run (repeatable)")
    parser.set_defaults(func=run_command)


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    return DemoSettings(
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
        seeds=args.seeds,
        first_seed=args.first_seed,
        num_teachers=args.num_teachers,
        teacher_model=args.teacher_model,
        student_model=args.student_model,
        teacher_kwargs=args.teacher_kwargs,
        student_kwargs=args.student_kwargs,
        batch_size=args.batch_size,
        lr=args.lr,
        beta=args.beta,
        device=args.device,
        threads=args.threads,
        out=args.out,
        cache=args.cache,
        extra=dict(args.set),
    )


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


FLAGS = {  # DemoSettings field -> the flag that sets it
    "seeds": "--seeds", "epochs": "--epochs", "teacher_epochs": "--teacher-epochs", "num_teachers": "--teachers",
    "teacher_model": "--teacher-model", "student_model": "--student-model", "teacher_kwargs": "--teacher-kwargs",
    "student_kwargs": "--student-kwargs", "batch_size": "--batch-size", "lr": "--lr", "beta": "--beta",
    "first_seed": "--seed", "device": "--device", "threads": "--threads", "out": "--out", "cache": "--cache",
}


def equivalent_command(settings: DemoSettings) -> str:
    """The `feed-fast demo` command line that reproduces `settings` (only what differs from the defaults)."""
    import json
    import shlex

    words = ["feed-fast", "demo"]
    without_flag = []
    for name, value in settings.to_dict().items():
        default = getattr(DEFAULTS, name)
        default = str(default) if isinstance(default, Path) else default
        if value == default or (name == "extra" and not value):
            continue
        if name == "extra":
            for key, item in value.items():
                words += ["--set", shlex.quote(f"{key}={item}")]
        elif name in FLAGS:
            text = json.dumps(value) if isinstance(value, dict) else str(value)
            words += [FLAGS[name], shlex.quote(text)]
        else:
            without_flag.append(f"{name}={value!r}")
    command = " ".join(words)
    if without_flag:
        command += "  # plus settings that have no flag: " + ", ".join(without_flag)
    return command
