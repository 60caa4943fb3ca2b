"""The `train` and `eval` commands of `feed-fast`."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

TRAIN_HELP = ("Distil (or train) a student as a YAML config says (see configs/; a shipped config can be named "
              "without its path), with --set overrides, into a run folder; or continue a stopped run with "
              "--resume RUN_DIR (--set may change what a resume allows, e.g. data.root). With --auto-resume the "
              "same command starts the run and continues it after every stop (torchrun --max-restarts, a "
              "requeued batch job). Config mistakes exit 2 before any work starts. So do an --out folder that "
              "already holds a run (see --overwrite and --auto-resume), a damaged checkpoint and an unreadable "
              "image; a failed write (a full disk) or a lost peer process exits 1 in one line, with the last "
              "checkpoint intact. A stop signal (SIGINT, SIGTERM, SIGUSR1, train.stop_signal) finishes the "
              "optimizer step, writes last.pt and exits 128 + the signal's number (130, 143, 138).")
EVAL_HELP = ("Top-1/top-5 of a run's model (model.pt, best.pt or last.pt; student.pt from earlier releases) on a "
             "dataset's val split, read by the same loader and at the same image size as in training unless told "
             "otherwise.")


def register(subparsers) -> None:
    from ..loaders.build import DATASETS

    p = subparsers.add_parser("train", help="distil (or train) a student from a YAML config", description=TRAIN_HELP)
    p.add_argument("config", nargs="?", help="YAML config (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set optim.lr=0.05 --set method.name=kd")
    p.add_argument("--teacher", dest="teachers", action="append", default=[], metavar="NAME=CHECKPOINT_OR_WEIGHTS",
                   help="the teachers, replacing the config's (repeat for several; --set applies after), e.g. "
                        "--teacher resnet34=runs/r34/model.pt --teacher resnet34=ResNet34_Weights.IMAGENET1K_V1: a "
                        "file here, or a value with a / or a checkpoint suffix (.pt, .pth, ...), is a checkpoint; "
                        "anything else a weights name")
    p.add_argument("--out", help="run directory (default: runs/<config name>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last.pt with its recorded config; --set may change "
                        "only what does not change the steps taken (data.root, data.skip_corrupt, data.num_threads, "
                        "train.log_every, ..., a longer multistep/constant schedule.epochs)")
    p.add_argument("--auto-resume", action="store_true",
                   help="continue the run in --out when it holds one (as --resume; CONFIG and --set must match its "
                        "recorded config except what --resume may change), else start it: one command for the "
                        "first start and every restart")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out folder that holds a run: its checkpoints, metrics and exports are "
                        "deleted first (other files stay)")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser("eval", help="top-1/top-5 of a student checkpoint on a dataset's val split",
                              description=EVAL_HELP)
    e.add_argument("--checkpoint", required=True, help="model.pt (student.pt before), best.pt or last.pt")
    e.add_argument("--data", required=True, help="dataset root (ignored for --dataset synthetic)")
    e.add_argument("--dataset", default=None, choices=DATASETS, help="default: the one the run trained on")
    e.add_argument("--image-size", type=int, default=None,
                   help="default: the run's image size (the dataset's native size if the export does not say)")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--device", default="auto", help="auto | cpu | cuda (or cuda:N)")
    e.add_argument("--skip-corrupt", action="store_true",
                   help="leave out images that cannot be decoded (each named in a warning) instead of stopping")
    e.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from ..atomic_files import WriteFailed
    from ..config import ConfigError, load_config
    from ..loaders import CorruptImageError
    from ..runtime.distributed import lost_peer
    from ..runtime.signals import exit_status
    from .api import resume, start_or_continue, train
    from .checkpoint import CheckpointError

    prefix = "feed-fast train: error:" if _rank() == 0 else f"feed-fast train: error (rank {_rank()}):"
    run_dir = args.resume or args.out
    try:
        overrides = train_overrides(args)
        if args.resume:
            if args.config or args.overwrite or args.auto_resume:
                raise ConfigError("--resume RUN_DIR takes no CONFIG, --overwrite or --auto-resume: the run's "
                                  "config.yaml is used (--set may change what a resume allows)")
            summary = resume(args.resume, overrides=overrides)
        else:
            if not args.config:
                raise ConfigError("give a CONFIG file (see configs/) or --resume RUN_DIR")
            if args.auto_resume and (args.overwrite or not args.out):
                raise ConfigError("--auto-resume needs --out DIR (the run folder to continue) and takes no "
                                  "--overwrite")
            cfg = load_config(args.config, overrides)
            run_dir = args.out or str(Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
            summary = (start_or_continue(cfg, run_dir) if args.auto_resume
                       else train(cfg, run_dir, overwrite=args.overwrite))
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        print(f"{prefix} {err}", file=sys.stderr)
        return 2
    except CorruptImageError as err:
        print(f"{prefix} {corrupt_images_line(err, run_dir)}", file=sys.stderr)
        return 2
    except WriteFailed as err:
        print(f"{prefix} {err}; every file is replaced whole, so what was written before is intact: once there "
              f"is room, `feed-fast train --resume {run_dir}` continues from the last checkpoint", file=sys.stderr)
        return 1
    except RuntimeError as err:
        reason = lost_peer(err)
        if reason is None:
            raise
        print(f"{prefix} lost another process of the run ({reason}); its latest last.pt stands: the run continues "
              "from it when started again (torchrun --max-restarts, or the same command with --auto-resume)",
              file=sys.stderr)
        return 1
    if summary["interrupted"]:
        if _rank() == 0:
            print(f"feed-fast train: stopped by {summary['stopped_by']}; resume with "
                  f"`feed-fast train --resume {summary['run_dir']}`", file=sys.stderr)
        return exit_status(summary["stopped_by"])
    if _rank() != 0:  # under torchrun, rank 0 reports
        return 0
    best = summary["best_top1"]
    print(f"feed-fast train: done; best top-1 {best:.2f}%, export {summary['export']}"
          if best is not None else f"feed-fast train: done; export {summary['export']}")
    return 0


def train_overrides(args: argparse.Namespace) -> list[str]:
    """`feed-fast train`'s config changes in the order they apply: the --teacher flags (the whole teachers list, as
    one `teachers=[...]` --set), then each --set."""
    from ..config.teachers import teacher_flags_override

    return [teacher_flags_override(args.teachers), *args.overrides] if args.teachers else list(args.overrides)


def _rank() -> int:
    from ..runtime.distributed import launched_rank

    return launched_rank()


def corrupt_images_line(err: Exception, run_dir: str | None = None) -> str:
    """A loader's CorruptImageError (a header, one line per file, advice in Python terms) as one line, with advice
    that works as written: for a run, the resume command that leaves unreadable images out (the run folder holds
    its config by then); for `feed-fast eval` (`run_dir` None), its --skip-corrupt."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    files = [line for line in lines[1:] if not line.startswith("Fix or remove")]
    if not (lines and lines[0].startswith("cannot decode") and files):
        return " ".join(lines)  # e.g. DALI failing on files Pillow reads: nothing to skip
    more = f" and {len(files) - 1} more" if len(files) > 1 else ""
    skip = (f"continue with `feed-fast train --resume {run_dir} --set data.skip_corrupt=true`" if run_dir
            else "add --skip-corrupt")
    return (f"{lines[0].rstrip(':')}: {files[0]}{more}; fix or remove the file(s), or {skip} to leave unreadable "
            "images out (`feed-fast data check ROOT` lists every broken file)")


def run_eval(args: argparse.Namespace) -> int:
    from ..loaders import CorruptImageError, build_loader
    from ..runtime import memory_format_for, resolve_device
    from .checkpoint import load_exported_student
    from .evaluate import evaluate

    def fail(message: str) -> int:
        print(f"feed-fast eval: error: {message}", file=sys.stderr)
        return 2

    path = Path(args.checkpoint)
    if not path.is_file():
        return fail(f"--checkpoint {str(path)!r} does not exist")
    try:
        model, meta = load_exported_student(path)
    except ValueError as err:  # CheckpointError: one line naming the file
        return fail(str(err))
    trained_on = meta.get("data", {})  # dataset, image_size, seed of the training run
    dataset = args.dataset or trained_on.get("dataset", "imagefolder")
    if dataset != "synthetic" and not Path(args.data).exists():
        return fail(f"--data {args.data!r} does not exist")
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        return fail(f"--device: {err}")
    memory_format = memory_format_for(device)
    kw = {"num_classes": meta["num_classes"]} if dataset == "synthetic" else {}
    try:
        loader = build_loader(args.data, "val", args.batch_size, dataset=dataset, device=device,
                              memory_format=memory_format, image_size=args.image_size or trained_on.get("image_size"),
                              seed=trained_on.get("seed", 0), skip_corrupt=args.skip_corrupt, **kw)
    except (ValueError, FileNotFoundError) as err:
        return fail(str(err))
    if loader.num_classes != meta["num_classes"]:
        return fail(f"the checkpoint predicts {meta['num_classes']} classes, the data has {loader.num_classes}")
    model.to(device, memory_format=memory_format)
    try:
        result = evaluate(model, loader)
    except CorruptImageError as err:
        return fail(corrupt_images_line(err))
    print(f"top1 {result['top1']:.2f} top5 {result['top5']:.2f} loss {result['loss']:.4f} "
          f"({result['samples']} images, {meta['model']})")
    return 0
