"""The DALI image-folder pipeline: files read in the loader's own order (so DALI and torchvision
shuffle, shard and resume alike), decoded by nvJPEG on the GPU ("mixed"; the hardware decoder where
the GPU has one) or on the CPU in DALI's CPU-only mode, cropped, flipped and normalized inside DALI.

Training crops are drawn on the host, from each sample's own seed (`transforms.train_crop` with
`FolderLoader.sample_seed`, as in the torchvision backend), with the image's size read from its header
(cached per file); DALI decodes only that window (`decoders.image_slice`, nvJPEG's ROI decode on the GPU)
and mirrors it as told.
Nothing in the pipeline is random, so a resumed epoch repeats the uninterrupted one crop for crop.

One DALI pipeline serves one pass over an epoch's batches (built at the start of the pass: far cheaper
than an epoch). A broken file fails a whole DALI batch without naming itself, so on failure the files
of the batches in flight are checked with Pillow and the culprit named, or left out (skip_corrupt) and
the pass rebuilt from the first batch not yet served. DALI's own log line about the file is held back
(`native_log`): the user reads one message, ours."""
from __future__ import annotations

import io
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from nvidia.dali import fn, math, pipeline_def, types
from nvidia.dali.auto_aug.core import signed_bin
from nvidia.dali.pipeline import do_not_convert
from PIL import Image

from .base import Batch
from .folder import FolderLoader
from .integrity import CorruptImageError, find_unreadable, image_error
from .native_log import claim_native_logs, holding_native_logs
from .normalize import IMAGENET_MEAN, IMAGENET_STD
from .transforms import NO_AUGMENT, NUM_MAGNITUDE_BINS, Augment, augment_space, val_resize_size

PREFETCH = 2  # DALI batches prepared ahead of the one being consumed
READ_AHEAD = 3  # batches of encoded files read from disk ahead of DALI
HEADER_BYTES = 1 << 16  # where a JPEG's frame header is looked for (after EXIF and ICC segments); else Pillow


def torchvision_val_geometry(encoded, shorter: int, crop: int):
    """resize_x, resize_y, crop_pos_x, crop_pos_y reproducing torchvision's Resize(shorter) +
    CenterCrop(crop) exactly: the long side becomes shorter * long // short (torchvision truncates, DALI's
    resize_shorter rounds), and the crop starts at round((size - crop) / 2) with Python's round-half-to-even
    (DALI's crop_pos=0.5 rounds halves up), both one-pixel shifts that would misalign the two backends."""
    shape = fn.peek_image_shape(encoded, adjust_orientation=False)  # (H, W, C) from the header, on the CPU
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


def auto_augment_suite(policy: str, image_size: int) -> list:
    """torchvision's ops of `policy` in torchvision's order (`transforms.augment_space`), as DALI augmentations
    (`nvidia.dali.auto_aug.augmentations`) taking torchvision's magnitude table for an image_size² image, so an op
    index and a bin drawn on the host mean the same op and magnitude on both backends. Where DALI's op reads its
    parameter otherwise, the mapping says how (each checked against torchvision in tests/test_recipe_augment.py)."""
    import math as pymath

    from nvidia.dali.auto_aug import augmentations as aa

    equalize, sharpness = equalize_and_sharpness()
    ops = {
        "Identity": aa.identity,
        # torchvision's F.affine shears the other way round from DALI's transforms.shear (about the top-left corner
        # in both)
        "ShearX": aa.shear_x.augmentation(mag_to_param=lambda m: [-m, 0.0]),
        "ShearY": aa.shear_y.augmentation(mag_to_param=lambda m: [0.0, -m]),
        # torchvision translates by int(magnitude): whole pixels, truncated toward 0
        "TranslateX": aa.translate_x_no_shape.augmentation(mag_to_param=lambda m: [float(int(m)), 0.0]),
        "TranslateY": aa.translate_y_no_shape.augmentation(mag_to_param=lambda m: [0.0, float(int(m))]),
        "Rotate": aa.rotate,
        "Brightness": aa.brightness,  # factor 1 + magnitude, as torchvision's adjust_* take it
        "Color": aa.color,
        "Contrast": aa.contrast,
        "Sharpness": sharpness,  # PIL's smoothing kernel; PIL leaves a 1-pixel border unsharpened
        "Posterize": aa.posterize,  # the magnitude is the bits kept
        # torchvision inverts pixels >= 255 * magnitude; DALI compares in float32, so the threshold is given as the
        # smallest whole value that is >= it (the pixels are whole numbers): exact
        "Solarize": aa.solarize.augmentation(mag_to_param=lambda m: float(pymath.ceil(255.0 * m))),
        "AutoContrast": aa.auto_contrast,
        "Equalize": equalize,  # OpenCV's histogram formula on DALI, PIL's on torchvision: close, not equal
    }
    suite = []
    for name, magnitudes, signed in augment_space(policy):
        table = magnitudes(NUM_MAGNITUDE_BINS, image_size, image_size)
        op = ops[name]
        if table is not None:
            op = op.augmentation(mag_range=table.double().numpy(), randomly_negate=signed, name=name)
        suite.append(op)
    return suite


def select_op(suite: list, index, first: int, last: int, **kwargs):
    """`suite[index](**kwargs)` per sample (index a batch of ints in [first, last]), by halving the batch with
    DALI's conditionals, as auto_aug's own `select` does; the ops themselves are called unconverted
    (`apply_op`): AutoGraph converting DALI's augmentation code cost seconds per pipeline."""
    if first == last:
        return apply_op(suite[first], **kwargs)
    middle = (first + last) // 2
    if index <= middle:
        images = select_op(suite, index, first, middle, **kwargs)
    else:
        images = select_op(suite, index, middle + 1, last, **kwargs)
    return images


@do_not_convert
def apply_op(op, **kwargs):
    return op(**kwargs)


def equalize_and_sharpness():
    """auto_aug's equalize and sharpness on `fn.equalize` / `fn.filter`: DALI 2.4's own still call the
    `fn.experimental` aliases, which print a deprecation warning no filter silences (DALI forces it on)."""
    from nvidia.dali.auto_aug import augmentations as aa
    from nvidia.dali.auto_aug.core import augmentation

    equalize_op = getattr(fn, "equalize", None) or fn.experimental.equalize
    filter_op = getattr(fn, "filter", None) or fn.experimental.filter

    @augmentation
    def equalize(data, _):
        return equalize_op(data)

    @augmentation(mag_range=(0, 0.9), randomly_negate=True, mag_to_param=aa.sharpness_kernel, param_device="auto")
    def sharpness(data, kernel):
        return filter_op(data, kernel)

    return equalize, sharpness


def folder_graph(source, *, train: bool, image_size: int, decoder: str, images_dtype, images_layout: str,
                 labels_to_gpu: bool, augment: Augment = NO_AUGMENT):
    # EXIF orientation is not applied, as Pillow (and so torchvision's ImageFolder) does not apply it: the
    # crop windows are in the stored image's pixels.
    num_ops, erasing = (augment.ops_per_sample, augment.random_erase > 0) if train else (0, False)
    if train:
        inputs = fn.external_source(source=source, num_outputs=5 + 3 * bool(num_ops) + 2 * erasing, batch=True,
                                    dtype=[types.UINT8, types.INT64] + [types.INT32] * (3 + 3 * bool(num_ops))
                                    + [types.FLOAT] * (2 * erasing))
        encoded, labels, anchor, shape, mirror, *drawn = inputs
        # Decode only the crop window drawn on the host (absolute (x, y) and (width, height)), then scale it.
        images = fn.decoders.image_slice(encoded, anchor, shape, device=decoder, output_type=types.RGB,
                                         adjust_orientation=False)
        images = fn.resize(images, resize_x=image_size, resize_y=image_size)
        crop_x = crop_y = 0.5
        if num_ops:
            # torchvision's order: crop, flip, then the ops (a shear or a rotation does not commute with the flip)
            op_index, op_bin, op_negate, *drawn = drawn
            images, mirror = fn.flip(images, horizontal=mirror), 0
            suite = auto_augment_suite(augment.auto_augment, image_size)
            for level in range(num_ops):  # the ops drawn on the host, in order; nothing random in DALI
                images = select_op(suite, op_index[level], 0, len(suite) - 1, data=images,
                                   magnitude_bin=signed_bin(op_bin[level], random_sign=op_negate[level]),
                                   num_magnitude_bins=NUM_MAGNITUDE_BINS, fill_value=0,
                                   interp_type=types.INTERP_LINEAR)
    else:
        encoded, labels = fn.external_source(source=source, num_outputs=2, batch=True,
                                             dtype=[types.UINT8, types.INT64])
        images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB, adjust_orientation=False)
        resize_x, resize_y, crop_x, crop_y = torchvision_val_geometry(encoded, val_resize_size(image_size),
                                                                      image_size)
        images = fn.resize(images, resize_x=resize_x, resize_y=resize_y)
        mirror = 0
    images = fn.crop_mirror_normalize(images, crop=(image_size, image_size), crop_pos_x=crop_x, crop_pos_y=crop_y,
                                      mean=[255 * m for m in IMAGENET_MEAN], std=[255 * s for s in IMAGENET_STD],
                                      mirror=mirror, dtype=images_dtype, output_layout=images_layout)
    if erasing:  # RandomErasing, value 0, on the normalized image: (y, x) anchor, (height, width) shape
        erase_anchor, erase_shape = drawn
        images = fn.erase(images, anchor=erase_anchor, shape=erase_shape, axis_names="HW", fill_value=0)
    return images, (labels.gpu() if labels_to_gpu else labels)


folder_pipeline = pipeline_def(folder_graph)
# auto_aug's `select` splits the batch by op with DALI's conditionals (`if` on a DataNode)
augmented_folder_pipeline = pipeline_def(enable_conditionals=True)(folder_graph)


def read_encoded(paths: list[str]) -> list[np.ndarray]:
    return [np.fromfile(path, dtype=np.uint8) for path in paths]


def jpeg_frame_size(head: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header (SOF marker), found by walking the marker segments in
    `head` (the file's first bytes); None when `head` is not a JPEG or ends before the frame header."""
    if head[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            at += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOF0..SOF15: not DHT, JPG, DAC
            height, width = int.from_bytes(head[at + 5:at + 7], "big"), int.from_bytes(head[at + 7:at + 9], "big")
            return (height, width) if height and width else None  # height 0: defined later (DNL), rare
        else:
            at += 2 + int.from_bytes(head[at + 2:at + 4], "big")
    return None


def header_size(encoded: np.ndarray) -> tuple[int, int]:
    """(height, width) of an encoded image as Pillow reports it (the stored pixels, EXIF rotation not applied),
    without decoding: a JPEG's frame header read directly (a few microseconds), other files through Pillow's
    lazy open (about 0.1 ms)."""
    size = jpeg_frame_size(encoded[:HEADER_BYTES].tobytes())
    if size is not None:
        return size
    with Image.open(io.BytesIO(encoded.tobytes())) as image:
        width, height = image.size
    return height, width


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
        # (height, width) of every file read so far, from its header (0: not read yet): the crop draws need it.
        self._sizes = np.zeros((self.dataset_size, 2), np.int32)

    def _pipeline(self, source):
        define = augmented_folder_pipeline if self.augment.ops_per_sample else folder_pipeline
        pipe = define(source, train=self.train, image_size=self.image_size, decoder=self._decoder,
                      images_dtype=self._dali_dtype, images_layout=self._layout,
                      labels_to_gpu=self._device_id is not None, augment=self.augment, batch_size=self.batch_size,
                      num_threads=max(1, self.num_threads), device_id=self._device_id,
                      prefetch_queue_depth=PREFETCH, exec_dynamic=False)
        pipe.build()
        return pipe

    def image_size_of(self, index: int) -> tuple[int, int]:
        """(height, width) of file `index` from its header; read once, then cached."""
        if not self._sizes[index, 0]:
            with open(self.index.paths[index], "rb") as file:
                self._sizes[index] = header_size(np.frombuffer(file.read(), np.uint8))
        return int(self._sizes[index, 0]), int(self._sizes[index, 1])

    def crop_windows(self, epoch: int, indices: list[int]):
        """The pipeline's crop inputs for these samples of `epoch`: anchors (x, y) and shapes (width, height),
        int32 (N, 2), and mirror flags (N,), from each sample's own crop draw."""
        crops = [self.train_crop(epoch, i, *self.image_size_of(i)) for i in indices]
        return (np.array([(c.left, c.top) for c in crops], np.int32).reshape(-1, 2),
                np.array([(c.width, c.height) for c in crops], np.int32).reshape(-1, 2),
                np.array([c.flip for c in crops], np.int32))

    def augment_inputs(self, epoch: int, indices: list[int]) -> tuple[np.ndarray, ...]:
        """The pipeline's inputs for the recipe's switches, from each sample's own draws (`train_augment`): with
        auto-augment, op indices, magnitude bins and negation flags, int32 (N, ops); with random erasing, the
        boxes' (y, x) anchors and (height, width) shapes, float32 (N, 2), zero-sized where nothing is erased."""
        if not self.augment.active:
            return ()
        drawn = [self.train_augment(epoch, i) for i in indices]
        inputs = ()
        if self.augment.ops_per_sample:
            ops = np.array([[tuple(op) for op in d.ops] for d in drawn], np.int32).reshape(
                len(indices), self.augment.ops_per_sample, 3)
            inputs += (ops[..., 0].copy(), ops[..., 1].copy(), ops[..., 2].copy())
        if self.augment.random_erase > 0:
            boxes = np.array([d.erase or (0, 0, 0, 0) for d in drawn], np.float32).reshape(-1, 4)
            inputs += (boxes[:, :2].copy(), boxes[:, 2:].copy())
        return inputs

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

    def _batch_source(self, batches, epoch: int, in_flight: deque):
        """Encoded files and labels of each batch (and, for training, its crop windows), for DALI's external
        source; records what it handed over. A reader thread loads the files and draws the crops READ_AHEAD
        batches early (file reads release the GIL), so the trainer's thread, which DALI calls this from, does
        not wait on the disk. A file whose header Pillow cannot read is found here, before DALI sees it."""
        def load(indices):
            encoded = read_encoded([self.index.paths[i] for i in indices])
            if not self.train:
                return encoded, None, {}
            unreadable = {}
            for i, data in zip(indices, encoded):
                if not self._sizes[i, 0]:  # the bytes are at hand: the size costs no second read
                    try:
                        self._sizes[i] = header_size(data)
                    except Exception:  # noqa: BLE001 -- Pillow raises many types; the reason as data check gives it
                        unreadable[self.index.paths[i]] = image_error(self.index.paths[i]) or "unreadable header"
            readable = [i for i in indices if self._sizes[i, 0]]
            return encoded, self.crop_windows(epoch, readable) + self.augment_inputs(epoch, readable), unreadable

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
                number, indices, loaded = reads.popleft()
                encoded, windows, unreadable = loaded.result()
                if unreadable:
                    self.leave_out(unreadable)  # raises naming them, or (skip_corrupt) warns and excludes them
                    encoded = [data for data, i in zip(encoded, indices) if i not in self.excluded]
                    indices = [i for i in indices if i not in self.excluded]
                    if not indices:
                        continue
                in_flight.append((number, indices))
                labels = np.asarray([self.index.labels[i] for i in indices], np.int64)
                yield (encoded, labels) if windows is None else (encoded, labels, *windows)

    def _batches(self, batch_indices, epoch: int, first_batch: int) -> Iterator[Batch]:
        pending = deque(enumerate(self.without_excluded(batch_indices), start=first_batch))
        with holding_native_logs():
            while pending:
                if self.excluded:  # after a failure: a batch whose every file is broken has nothing to serve
                    pending = deque((n, idx) for n, idx in pending
                                    if any(i not in self.excluded for i in idx.tolist()))
                    if not pending:
                        break
                in_flight: deque = deque()  # batches handed to DALI and not yet served
                pipe = self._pipeline(self._batch_source(tuple(pending), epoch, in_flight))
                failure = None
                try:
                    while pending:
                        try:
                            images, labels = pipe.run()
                        except StopIteration:  # the last batches held only files with unreadable headers
                            return
                        served, _ = in_flight.popleft()
                        while pending and pending[0][0] <= served:  # and those before it that held only such
                            pending.popleft()
                        yield self._to_torch(images, labels)
                except CorruptImageError:  # our own, from the batch source: it names the file already
                    raise
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
        native = claim_native_logs()  # DALI's own lines about the failure: folded into the one message
        if not unreadable:
            said = "\n".join([*native, str(error)])
            raise CorruptImageError(f"DALI failed on a batch holding these {len(suspects)} file(s), and Pillow "
                                    f"can read them all, so the failure is not a broken file: "
                                    f"{suspects[:20]}\nDALI said: {said}", suspects) from error
        self.leave_out(unreadable)


def _torch_dtype(dali_dtype) -> torch.dtype:
    return torch.float16 if dali_dtype == types.FLOAT16 else torch.float32
