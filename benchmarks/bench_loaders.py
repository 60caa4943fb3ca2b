"""Images per second of each input pipeline, on the same data, at training and validation settings.

    python benchmarks/bench_loaders.py                      # builds a JPEG folder, prints a table
    python benchmarks/bench_loaders.py --data /imagenet --batches 200 --batch-size 256 \
        --out benchmarks/results/loaders_<device>.json      # a real folder; JSON only when --out is given

Without --data the folder is cut from scikit-image's photos at ImageNet-like sizes (short side 300-500
px, JPEG quality 90). Measured: image folders through DALI (GPU "mixed" or CPU decoding, whichever the
device gives) and torchvision (Pillow in DataLoader workers), CIFAR-100 held on the device (pickles written
here, random pixels) and `synthetic`. Each run skips `--warmup` batches (pipeline start, worker start-up)
and times the next `--batches` (or the rest of the epoch), with the device synchronized at the end.
Speed is reported, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from feed_fast.loaders import build_loader, dali_available
from gpu_check_report import help_texts, now_utc  # a sibling: the script's folder is on sys.path
from PIL import Image

from feed_fast.environment import environment, optional_version
from feed_fast.runtime import resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _loader_data import CLASS_PHOTOS, write_cifar


def make_jpeg_folder(root: str, images_per_split: int, seed: int = 0) -> None:
    """root/{train,val}/<class>/*.jpg, ImageNet-like sizes, cut from scikit-image's photos."""
    rng = np.random.default_rng(seed)
    photos = {name: Image.fromarray(load()) for name, load in CLASS_PHOTOS.items()}
    for split in ("train", "val"):
        for n in range(images_per_split):
            name = list(photos)[n % len(photos)]
            short = int(rng.integers(300, 501))
            aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            width, height = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            photos[name].resize((width, height), Image.BILINEAR).save(os.path.join(folder, f"{n:05d}.jpg"),
                                                                         quality=90)


def time_loader(loader, warmup: int, batches: int | None, device: torch.device) -> dict:
    iterator = iter(loader)
    for _ in range(min(warmup, len(loader) - 1)):
        next(iterator)
    images = steps = 0
    start = time.perf_counter()
    for batch_images, labels in iterator:
        images += len(labels)
        steps += 1
        if batches is not None and steps >= batches:
            break
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    shape = list(batch_images.shape)
    return {"images": images, "batches": steps, "seconds": round(seconds, 4),
            "images_per_s": round(images / seconds, 1) if seconds > 0 else None, "batch_shape": shape,
            "dtype": str(batch_images.dtype).replace("torch.", ""),
            "channels_last": bool(batch_images.is_contiguous(memory_format=torch.channels_last))}


def loader_environment(device: torch.device) -> dict:
    """feed_fast.environment's record, plus what decodes images here: Pillow, DALI and the CPU cores."""
    record = environment(device)
    record["device"]["cpu_count"] = os.cpu_count()
    record["versions"].update(pillow=optional_version("PIL"), dali=optional_version("nvidia.dali"))
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(**help_texts(__doc__))
    parser.add_argument("--data", help="an image folder root (train/, val/); default: build one")
    parser.add_argument("--images", type=int, default=192, help="images per split in the built folder")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1),
                        help="DALI CPU threads / DataLoader workers")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=2, help="batches skipped before timing")
    parser.add_argument("--batches", type=int, default=None, help="batches timed (default: the rest of an epoch)")
    parser.add_argument("--cifar-images", type=int, default=50000, help="CIFAR-100 training images (random)")
    parser.add_argument("--out", help="write the results as JSON here (a GPU run: benchmarks/results/loaders_<gpu>.json; "
                        "a CPU one: the ignored benchmarks/results/local/)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    common = {"image_size": args.image_size, "device": device, "dtype": dtype, "num_threads": args.threads}
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data
        if root is None:
            root = os.path.join(scratch, "images")
            make_jpeg_folder(root, args.images)
        backends = ["dali", "torchvision"] if dali_available() else ["torchvision"]
        for backend in backends:
            for split in ("train", "val"):
                loader = build_loader(root, split, args.batch_size, backend=backend, **common)
                results.append({"dataset": "imagefolder", "backend": backend, "split": split,
                                **time_loader(loader, args.warmup, args.batches, device)})
                print(f"{backend:12s} {split:5s} {results[-1]['images_per_s']:>10} images/s", flush=True)
        write_cifar(scratch, "cifar100", train=args.cifar_images, test=1000)
        cifar = {**common, "image_size": 32}
        for split in ("train", "val"):
            loader = build_loader(scratch, split, args.batch_size, dataset="cifar100", **cifar)
            results.append({"dataset": "cifar100", "backend": "device tensors", "split": split,
                            **time_loader(loader, args.warmup, args.batches, device)})
            print(f"{'cifar100':12s} {split:5s} {results[-1]['images_per_s']:>10} images/s", flush=True)
        loader = build_loader(None, "train", args.batch_size, dataset="synthetic", **common)
        results.append({"dataset": "synthetic", "backend": "device tensors", "split": "train",
                        **time_loader(loader, args.warmup, args.batches, device)})
        print(f"{'synthetic':12s} {'train':5s} {results[-1]['images_per_s']:>10} images/s", flush=True)

    report = {"benchmark": "loaders",
              "created_utc": now_utc(),
              **loader_environment(device),
              "settings": {"batch_size": args.batch_size, "image_size": args.image_size, "threads": args.threads,
                           "dtype": args.dtype, "data": args.data or f"built: {args.images} JPEGs per split",
                           "warmup_batches": args.warmup, "timed_batches": args.batches},
              "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
