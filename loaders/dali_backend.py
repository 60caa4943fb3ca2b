"""The DALI image-folder pipeline: files read in the loader's own order (so DALI and torchvision
shuffle, shard and resume alike), decoded by nvJPEG on the GPU ("mixed"; the hardware decoder where
the GPU has one) or on the CPU in DALI's CPU-only mode, cropped, flipped and normalized inside DALI.

One DALI pipeline serves one pass over an epoch's batches (built at the start of the pass: far cheaper
than an epoch). A broken file fails a whole DALI batch without naming itself, so on failure the files
of the batches in flight are checked with Pillow and the culprit named, or left out (skip_corrupt) and
the pass rebuilt from the first batch not yet served."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from nvidia.dali import fn, math, pipeline_def, types

from . import sampling
from .base import Batch
from .folder import FolderLoader
from .integrity import CorruptImageError, find_unreadable
from .normalize import IMAGENET_MEAN, IMAGENET_STD
from .transforms import CROP_RATIO, CROP_SCALE, val_resize_size

PREFETCH = 2  # DALI batches prepared ahead of the one being consumed
READ_AHEAD = 3  # batches of encoded files read from disk ahead of DALI


def torchvision_val_geometry(encoded, shorter: int, crop: int):
    """resize_x, resize_y, crop_pos_x, crop_pos_y reproducing torchvision's Resize(shorter) +
    CenterCrop(crop) exactly: the long side becomes shorter * long // short (torchvision truncates, DALI's
    resize_shorter rounds), and the crop starts at round((size - crop) / 2) with Python's round-half-to-even
    (DALI's crop_pos=0.5 rounds halves up), both one-pixel shifts that would misalign the two backends."""
    shape = fn.peek_image_shape(encoded)  # (H, W, C) read from the header, on the CPU
    height, width = shape[0], shape[1]
    portrait = height >= width  # torchvision: width <= height -> width is the short side
    new_width = portrait * shorter + (1 - portrait) * ((shorter * width) // height)
    new_height = portrait * ((shorter * height) // width) + (1 - portrait) * shorter

    def center_fraction(size):
        slack = size - crop
        start = slack // 2 + (slack % 2) * ((slack // 2) % 2)  # round(slack / 2), halves to even
        return fn.cast(start, dtype=types.FLOAT) / fn.cast(math.max(slack, 1), dtype=types.FLOAT)

    return (fn.cast(new_width, dtype=types.FLOAT), fn.cast(new_height, dtype=types.FLOAT),
            center_fraction(new_width), center_fraction(new_height))


@pipeline_def
def folder_pipeline(source, *, train: bool, image_size: int, decoder: str, images_dtype, images_layout: str,
                    labels_to_gpu: bool):
    encoded, labels = fn.external_source(source=source, num_outputs=2, batch=True,
                                         dtype=[types.UINT8, types.INT64])
    if train:
        # Decode only the random crop window (nvJPEG ROI decode), then scale it to the output size.
        images = fn.decoders.image_random_crop(encoded, device=decoder, output_type=types.RGB,
                                               random_area=list(CROP_SCALE), random_aspect_ratio=list(CROP_RATIO),
                                               num_attempts=10)
        images = fn.resize(images, resize_x=image_size, resize_y=image_size)
        mirror, crop_x, crop_y = fn.random.coin_flip(probability=0.5), 0.5, 0.5
    else:
        images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
        resize_x, resize_y, crop_x, crop_y = torchvision_val_geometry(encoded, val_resize_size(image_size),
                                                                      image_size)
        images = fn.resize(images, resize_x=resize_x, resize_y=resize_y)
        mirror = 0
    images = fn.crop_mirror_normalize(images, crop=(image_size, image_size), crop_pos_x=crop_x, crop_pos_y=crop_y,
                                      mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD],
                                      mirror=mirror, dtype=images_dtype, output_layout=images_layout)
    return images, (labels.gpu() if labels_to_gpu else labels)


def read_encoded(paths: list[str]) -> list[np.ndarray]:
    return [np.fromfile(path, dtype=np.uint8) for path in paths]


class DaliImageFolderLoader(FolderLoader):
    backend = "dali"

    def __init__(self, root, split: str, batch_size: int, **options):
        super().__init__(root, split, batch_size, **options)
        on_gpu = self.device.type == "cuda"
        self._device_id = self.device.index if on_gpu else None  # None: DALI's CPU-only mode
        self._decoder = "mixed" if on_gpu else "cpu"
        # DALI has no bfloat16: it writes float32 and torch rounds once.
        self._dali_dtype = types.FLOAT16 if self.dtype == torch.float16 else types.FLOAT
        # HWC batches viewed as NCHW are channels-last with no copy (NVIDIA's own ResNet-50 example does so).
        self._layout = "HWC" if self.memory_format == torch.channels_last else "CHW"

    def _pipeline(self, source, seed: int):
        pipe = folder_pipeline(source, train=self.train, image_size=self.image_size, decoder=self._decoder,
                               images_dtype=self._dali_dtype, images_layout=self._layout,
                               labels_to_gpu=self._device_id is not None, batch_size=self.batch_size,
                               num_threads=max(1, self.num_threads), device_id=self._device_id, seed=seed,
                               prefetch_queue_depth=PREFETCH, exec_dynamic=False)
        pipe.build()
        return pipe

    def _to_torch(self, images, labels) -> Batch:
        if self._device_id is None:
            images = torch.from_numpy(images.as_array()).to(self.device)
            labels = torch.from_numpy(labels.as_array()).to(self.device)
        else:
            from nvidia.dali.plugin.pytorch import feed_ndarray

            stream = torch.cuda.current_stream(self.device)
            # As DALI's own PyTorch iterator does: copy on torch's current stream, then let DALI reuse its buffer.
            images_out = torch.empty(images.as_tensor().shape(), dtype=_torch_dtype(self._dali_dtype),
                                     device=self.device)
            feed_ndarray(images, images_out, cuda_stream=stream)
            images = images_out
            labels_out = torch.empty(labels.as_tensor().shape(), dtype=torch.int64, device=self.device)
            feed_ndarray(labels, labels_out, cuda_stream=stream)
            labels = labels_out
        if self._layout == "HWC":
            images = images.permute(0, 3, 1, 2)  # NCHW view, channels-last strides
        return images.to(self.dtype), labels.reshape(-1)

    def _batch_source(self, batches, in_flight: deque):
        """Encoded files and labels of each batch, for DALI's external source; records what it handed over.
        A reader thread loads the files READ_AHEAD batches early (file reads release the GIL), so the
        trainer's thread, which DALI calls this from, does not wait on the disk."""
        def load(indices):
            return read_encoded([self.index.paths[i] for i in indices])

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dali-read") as reader:
            reads: deque = deque()
            upcoming = iter(batches)
            while True:
                while len(reads) < READ_AHEAD and (batch := next(upcoming, None)) is not None:
                    number, indices = batch
                    indices = [i for i in indices.tolist() if i not in self.excluded]
                    reads.append((number, indices, reader.submit(load, indices)))
                if not reads:
                    return
                number, indices, encoded = reads.popleft()
                in_flight.append((number, indices))
                yield encoded.result(), np.asarray([self.index.labels[i] for i in indices], np.int64)

    def _batches(self, batch_indices, epoch: int, first_batch: int) -> Iterator[Batch]:
        pending = deque(enumerate(self.without_excluded(batch_indices), start=first_batch))
        while pending:
            if self.excluded:  # after a failure: a batch whose every file is broken has nothing to serve
                pending = deque((n, idx) for n, idx in pending if any(i not in self.excluded for i in idx.tolist()))
                if not pending:
                    break
            in_flight: deque = deque()  # batches handed to DALI and not yet served
            seed = sampling.batch_seed(self.seed, epoch, pending[0][0], self.shard_id) & 0x7FFF_FFFF
            pipe = self._pipeline(self._batch_source(tuple(pending), in_flight), seed)
            failure = None
            try:
                while pending:
                    images, labels = pipe.run()
                    in_flight.popleft()
                    pending.popleft()
                    yield self._to_torch(images, labels)
            except RuntimeError as error:  # DALI reports a failed decode as RuntimeError
                failure = error
            finally:
                del pipe  # the failed pipeline and its threads go before the broken files are looked for
            if failure is not None:
                self._handle_failure(failure, in_flight)
                # The loop rebuilds the pass from the first batch not served, now without the broken files.

    def _handle_failure(self, error: RuntimeError, in_flight) -> None:
        suspects = [self.index.paths[i] for _, indices in in_flight for i in indices]
        # A few batches of files: checked in this thread. Starting threads here, next to a failed DALI
        # pipeline, was seen to hang in Thread.start once in a full test run.
        unreadable = find_unreadable(suspects, workers=1)
        if not unreadable:
            raise CorruptImageError(f"DALI failed on a batch holding these {len(suspects)} file(s), and Pillow "
                                    f"can read them all, so the failure is not a broken file: "
                                    f"{suspects[:20]}\nDALI said: {error}", suspects) from error
        self.leave_out(unreadable)


def _torch_dtype(dali_dtype) -> torch.dtype:
    return torch.float16 if dali_dtype == types.FLOAT16 else torch.float32
