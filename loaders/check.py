"""`feed-fast data check`: what a data folder holds and which of its files cannot be read, before a
long run finds out halfway."""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field

from .cifar import LAYOUTS, cifar_files, read_cifar_pickle
from .folder import scan_split
from .integrity import find_unreadable

SPLITS = ("train", "val")


@dataclass
class SplitReport:
    name: str  # "train", "val", or the folder itself when it holds classes directly
    path: str
    class_counts: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason
    error: str | None = None  # the split cannot be used at all

    @property
    def ok(self) -> bool:
        return self.error is None and not self.unreadable


def check_image_split(name: str, path: str, workers: int) -> SplitReport:
    report = SplitReport(name, path)
    try:
        index = scan_split(path)
    except FileNotFoundError as error:
        report.error = str(error)
        return report
    counts = collections.Counter(index.labels)
    report.class_counts = {cls: counts[label] for label, cls in enumerate(index.classes)}
    report.unreadable = find_unreadable(index.paths, workers=workers)
    return report


def check_cifar(root: str, dataset: str) -> list[SplitReport]:
    reports = []
    label_key = LAYOUTS[dataset][3]
    for split in SPLITS:
        report = SplitReport(f"{dataset} {split}", os.path.join(root, LAYOUTS[dataset][0]))
        try:
            labels = [label for path in cifar_files(root, dataset, split)
                      for label in read_cifar_pickle(path, label_key)[1].tolist()]
        except (OSError, ValueError, TypeError) as error:
            report.error = str(error)
        else:
            counts = collections.Counter(labels)
            report.class_counts = {str(label): counts[label] for label in sorted(counts)}
        reports.append(report)
    return reports


def check_root(root: str, *, workers: int = 4) -> list[SplitReport]:
    """Reports for root/train and root/val (those present), for CIFAR folders under root, or, when root
    has none of these, for root itself as one split of class folders."""
    if not os.path.isdir(root):
        return [SplitReport("root", root, error=f"not a folder: {root}")]
    reports = [check_image_split(split, os.path.join(root, split), workers)
               for split in SPLITS if os.path.isdir(os.path.join(root, split))]
    for dataset, layout in LAYOUTS.items():
        if os.path.isdir(os.path.join(root, layout[0])):
            reports += check_cifar(root, dataset)
    return reports or [check_image_split(os.path.basename(os.path.normpath(root)), root, workers)]
