"""`feed-fast data check`: what a data folder holds, which of its files cannot be read and whether its
splits' classes agree (val is labelled with train's classes), before a long run finds out halfway."""
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
    foreign_classes: list[str] = field(default_factory=list)  # class folders the training split lacks: refused
    absent_classes: list[str] = field(default_factory=list)  # training classes with no images here: a warning

    @property
    def ok(self) -> bool:
        return self.error is None and not self.unreadable and not self.foreign_classes


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
    compare_classes(reports)
    for dataset, layout in LAYOUTS.items():
        if os.path.isdir(os.path.join(root, layout[0])):
            reports += check_cifar(root, dataset)
    return reports or [check_image_split(os.path.basename(os.path.normpath(root)), root, workers)]


def compare_classes(reports: list[SplitReport]) -> None:
    """Against the training split's classes (the labels every split uses): the val class folders train lacks
    (the loaders refuse them) and the training classes val has no images of (they warn)."""
    train = next((r for r in reports if r.name == "train" and r.error is None), None)
    for report in reports:
        if train is None or report is train or report.error is not None:
            continue
        report.foreign_classes = sorted(set(report.class_counts) - set(train.class_counts))
        report.absent_classes = [name for name in train.class_counts if name not in report.class_counts]
