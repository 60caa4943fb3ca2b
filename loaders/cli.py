"""`feed-fast data check ROOT`: class counts, unreadable files and class agreement between the splits of a
data folder; exit status 1 when something is wrong, so scripts can gate a run on it."""
from __future__ import annotations

import argparse
import os

from .check import check_root
from .folder import absent_classes_line, foreign_classes_line


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect data sets")
    commands = data.add_subparsers(dest="data_command", required=True)
    check = commands.add_parser("check", help="list class counts and unreadable image files under ROOT",
                                description="Scan ROOT/train and ROOT/val (or ROOT itself as one split of "
                                            "class folders, or CIFAR pickle folders under ROOT), decode every "
                                            "image with Pillow and list the files that fail. Val is labelled "
                                            "with train's classes: a val class folder train lacks fails the "
                                            "check, a training class without val images is a warning.")
    check.add_argument("root", metavar="ROOT", help="data folder")
    check.add_argument("--workers", type=int, default=4, help="decoding threads (default 4)")
    check.add_argument("--max-classes", type=int, default=20,
                       help="class counts printed per split; the rest are summarized (default 20)")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    reports = check_root(args.root, workers=args.workers)
    for report in reports:
        print(f"[{report.name}] {report.path}")
        if report.error:
            print(f"  ERROR: {report.error}")
            continue
        counts = report.class_counts
        print(f"  {sum(counts.values())} images in {len(counts)} classes "
              f"(smallest {min(counts.values())}, largest {max(counts.values())})")
        for name, count in list(counts.items())[: args.max_classes]:
            print(f"    {name}: {count}")
        if len(counts) > args.max_classes:
            print(f"    ... {len(counts) - args.max_classes} more classes")
        for path, reason in report.unreadable.items():
            print(f"  UNREADABLE {path}: {reason}")
        print(f"  {len(report.unreadable)} unreadable file(s)")
        train_dir = os.path.join(os.path.dirname(os.path.normpath(report.path)), "train")
        if report.foreign_classes:
            print(f"  ERROR: {foreign_classes_line(report.foreign_classes, report.path, train_dir)}")
        if report.absent_classes:
            print(f"  WARNING: {absent_classes_line(report.absent_classes, report.path)}")
    problems = sum(1 for report in reports if not report.ok)
    print("OK" if not problems else f"FAILED: {problems} split(s) with problems")
    return 0 if not problems else 1
