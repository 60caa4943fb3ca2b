"""The run configuration: one frozen dataclass per section of a YAML file in configs/, with the defaults
(FT's official CIFAR recipe where the FEED paper leaves a setting open). Choices come from the registries that
own them: method names from `feed_fast.methods`, datasets and data backends from `feed_fast.loaders`, loss
backends from the op's `validation.BACKENDS`, devices and precisions from `feed_fast.runtime`. Types and bounds
are checked by parse.py from the hints below; `check_run` adds the rules that span keys."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from ..loaders.build import BACKENDS as DATA_BACKENDS
from ..loaders.build import DATASETS, dali_available
from ..loaders.transforms import AUTO_AUGMENTS, NUM_MAGNITUDE_BINS
from ..methods import METHODS
from ..ops.validation import BACKENDS as LOSS_BACKENDS
from ..runtime import DEVICES, PRECISIONS, resolve_device, resolve_precision
from .parse import Above, AtLeast, Below, ConfigError, from_mapping
from .teachers import apply_run_overrides, both_sources_hint

PositiveInt = Annotated[int, AtLeast(1)]
NonNegativeInt = Annotated[int, AtLeast(0)]
PositiveFloat = Annotated[float, Above(0)]
NonNegativeFloat = Annotated[float, AtLeast(0)]
Fraction = Annotated[float, AtLeast(0), Below(1)]  # [0, 1)
MethodName = Literal[tuple(METHODS)]
LossBackend = Literal[LOSS_BACKENDS]  # auto: fused on CUDA
Dataset = Literal[DATASETS]
DataBackend = Literal[DATA_BACKENDS]  # image folders only; auto: DALI when installed
DeviceName = Literal[DEVICES]
PrecisionName = Literal[PRECISIONS]  # auto: bf16 on CUDA where supported, fp32 on the CPU


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str = "resnet56"  # see feed_fast.models: CIFAR names, torchvision names, timm/<arch>[.<tag>]
    kwargs: dict[str, Any] = field(default_factory=dict)  # build_model keyword arguments


@dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    name: str = field(metadata={"example": "a model name such as resnet56 or resnet34"})
    checkpoint: str | None = None  # a local file: a feed-fast export, last.pt/best.pt or a plain state dict
    weights: str | None = None  # or a weights name the model zoo knows (torchvision, timm's `pretrained`)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TranslatorConfig:  # FEEDLoss's translator options (see feed_fast.ops.translator)
    width: PositiveInt | None = None
    final_kernel_size: Literal[1, 3] = 3
    batch_norm: bool = False
    final_activation: bool = True
    negative_slope: float = 0.1


@dataclass(frozen=True, kw_only=True)
class KDConfig:
    enabled: bool = False  # adds Hinton KD to pfeed/sfeed; method kd always uses it
    weight: NonNegativeFloat = 1.0
    temperature: PositiveFloat = 4.0


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    name: MethodName = "pfeed"
    beta: NonNegativeFloat = 500.0
    backend: LossBackend = "auto"
    generations: PositiveInt = 2  # sfeed only
    feature_pool: Literal["none", "adaptive"] = "none"  # adaptive: pool teacher maps to the student's size
    translator: TranslatorConfig = field(default_factory=TranslatorConfig)
    kd: KDConfig = field(default_factory=KDConfig)


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """torchvision's recipe switches after the training crop and flip (image folders, both backends, the same
    ops per sample; loaders.transforms.Augment, docs/recipe.md). Defaults: off."""
    auto_augment: Literal[AUTO_AUGMENTS] | None = None  # torchvision's --auto-augment: ta_wide, ra
    ra_num_ops: PositiveInt = 2  # RandAugment's num_ops
    ra_magnitude: Annotated[int, AtLeast(0), Below(NUM_MAGNITUDE_BINS)] = 9  # torchvision's --ra-magnitude
    random_erase: Fraction = 0.0  # torchvision's --random-erase: RandomErasing's p


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: Dataset = "cifar100"
    root: str = "data/cifar100"
    backend: DataBackend = "auto"
    # Per process: the images one forward sees (one micro-batch). With global_batch_size set, the most a
    # process holds: the micro-batch is then the largest divisor of global_batch_size / processes up to it.
    batch_size: PositiveInt = 128
    # Global: samples per optimizer step over all processes and micro-batches. null: batch_size x processes x
    # train.accumulate as launched. Set, it fixes the optimizer step (and the lr that goes with it) whatever
    # the number of processes: train.accumulate is derived (leave it at 1).
    global_batch_size: PositiveInt | None = None
    eval_batch_size: PositiveInt = 256
    image_size: PositiveInt | None = 32  # null: the dataset's native size (CIFAR 32, image folders 224)
    num_threads: PositiveInt = 2
    download: bool = False  # CIFAR only
    num_classes: PositiveInt | None = None  # synthetic only
    skip_corrupt: bool = False  # leave out unreadable images (with a warning) instead of failing
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # image folders only


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    lr: PositiveFloat = 0.1
    momentum: NonNegativeFloat = 0.9
    nesterov: bool = False
    weight_decay: NonNegativeFloat = 5e-4  # translators included
    apex: bool = False  # apex's FusedSGD when importable (CUDA)
    # torchvision's --norm-weight-decay / --bias-weight-decay, each a param group of its own (engine/optim.py);
    # null: weight_decay. bias_weight_decay: every parameter named `bias`, norm layers' included;
    # norm_weight_decay: the other parameters of norm layers (BatchNorm, LayerNorm, GroupNorm, ...).
    norm_weight_decay: NonNegativeFloat | None = None
    bias_weight_decay: NonNegativeFloat | None = None
    # torchvision's --clip-grad-norm: the gradients of everything the optimizer updates scaled to this total
    # L2 norm at most, before each update (no host sync). null: off.
    clip_grad_norm: PositiveFloat | None = None


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    name: Literal["multistep", "cosine", "constant"] = "multistep"
    # FT's official train_student.py: x0.1 after epochs 82 and 123; its `range(0, 163 + 1)` runs 164 epochs
    epochs: PositiveInt = 164
    milestones: list[NonNegativeInt] = field(default_factory=lambda: [82, 123])
    gamma: PositiveFloat = 0.1
    warmup_epochs: NonNegativeInt = 0  # linear warmup, per iteration
    min_lr: NonNegativeFloat = 0.0


@dataclass(frozen=True, kw_only=True)
class EMAConfig:
    """An exponential moving average of the student's weights and buffers (feed_fast/engine/ema.py), evaluated
    each epoch beside the raw student and exported as student_ema.pt."""
    enabled: bool = False
    decay: Fraction = 0.9999  # per update: ema = decay * ema + (1 - decay) * student
    every: PositiveInt = 1  # optimizer steps between updates (torchvision's model_ema_steps)
    warmup_steps: NonNegativeInt = 0  # updates within the first warmup_steps optimizer steps copy the student


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    seed: int = 0
    device: DeviceName = "auto"
    precision: PrecisionName = "auto"
    channels_last: bool | Literal["auto"] = "auto"  # auto: on CUDA
    # false: eager; true: torch.compile the student's and teachers' forwards; step: the whole step compiled
    # (fullgraph units), replayed as one CUDA graph on a GPU (feed_fast/engine/compiled_step.py)
    compile: bool | Literal["step"] = False
    deterministic: bool = False
    log_every: PositiveInt = 50  # steps between TensorBoard scalars and progress lines
    max_steps_per_epoch: PositiveInt | None = None  # cap on optimizer steps (smoke runs, benchmarks)
    eval_every: PositiveInt = 1  # epochs
    # auto: a bar on a TTY, plain lines otherwise; epochs: the start block and one line per epoch, no per-step
    # progress; none: nothing on stderr but warnings and errors
    progress: Literal["auto", "bar", "lines", "epochs", "none"] = "auto"
    # score every teacher and their ensemble on the val split before distilling, once per run, and warn about a
    # teacher near chance or far below the best one (engine/teacher_check.py, docs/training.md "Teachers")
    check_teachers: bool = True
    # recipe switches (README "Training"): every method's CE term (validation loss stays plain CE)
    label_smoothing: Fraction = 0.0
    ema: EMAConfig = field(default_factory=EMAConfig)
    # torchvision's --mixup-alpha / --cutmix-alpha: Beta(alpha, alpha) per batch, on the device after the loader
    # (engine/mix.py); both > 0: one of the two per batch, at even odds. 0: off.
    mixup_alpha: NonNegativeFloat = 0.0
    cutmix_alpha: NonNegativeFloat = 0.0
    # micro-batches of data.batch_size per optimizer step (per process); steps, schedule, log_every and
    # max_steps_per_epoch count optimizer steps. Derived when data.global_batch_size is set, and changed by a
    # resume on another number of processes to keep the run's global batch.
    accumulate: PositiveInt = 1
    # last.pt inside the epoch: at the first optimizer-step boundary this long after the last checkpoint
    # (written in a background thread; the step loop waits only for the copy to host memory). 0: only at
    # epoch ends and on a stop signal. Epochs shorter than this never write one.
    checkpoint_minutes: NonNegativeFloat = 15.0
    # Stop signals: SIGINT, SIGTERM and SIGUSR1 (SLURM's --signal=USR1@T) always finish the optimizer step,
    # write last.pt and exit 128 + the signal's number; this adds one more (e.g. SIGUSR2, SIGHUP).
    stop_signal: str | None = None
    sync_bn: bool = False  # under torchrun: the student's and translators' BatchNorm as SyncBatchNorm (CUDA)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    teachers: list[TeacherConfig] = field(default_factory=list)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def from_dict(cls, raw: dict | None, overrides=(), *, check_paths: bool = True) -> RunConfig:
        """Defaults + `raw` (the nested dict of a YAML file) + `--set key=value` overrides (with teachers.py's
        rules for a teacher's source), every key type-checked, then the rules that span keys (`check_run`).
        Raises ConfigError naming the key."""
        cfg = from_mapping(cls, apply_run_overrides(raw or {}, overrides))
        check_run(cfg, check_paths=check_paths)
        return cfg

    def to_dict(self) -> dict:
        """The resolved nested dict: what config.yaml in a run folder holds, and what from_dict reads back."""
        return asdict(self)


def check_model(key: str, name: str) -> None:
    from ..models import check_model_name

    try:
        check_model_name(name)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


def check_weights(key: str, name: str, weights: str) -> None:
    """The model zoo decides which weights names a model takes; offline, nothing is downloaded here."""
    from ..models import check_weights as zoo_check_weights

    try:
        zoo_check_weights(name, weights)
    except ValueError as err:
        message = str(err)
        prefix = f"weights={weights!r}"  # the zoo names the value as an argument; here the key names it
        detail = f"{weights!r}{message[len(prefix):]}" if message.startswith(prefix) else f": {message}"
        raise ConfigError(f"{key} {detail}") from None


def missing_checkpoint_hint(teacher: TeacherConfig) -> str:
    """A hint for a missing checkpoint: its twin when it lies beside it (model.pt where an earlier release wrote
    student.pt, or the reverse), else where a teacher's checkpoint comes from."""
    from ..engine.checkpoint import LEGACY_EXPORTS

    path = Path(teacher.checkpoint)
    twins = {**LEGACY_EXPORTS, **{old: new for new, old in LEGACY_EXPORTS.items()}}
    other = path.with_name(twins[path.name]) if path.name in twins else None
    if other is None or not other.is_file():
        return (": a teacher's checkpoint is a local file, a finished run's model.pt (train the teacher first: the "
                "shipped configs say how in their header) or a torchvision/timm state dict; --teacher "
                f"{teacher.name}=FILE points at another")
    return (f" (but {str(other)!r} does: a run's export was student.pt before feed-fast named it model.pt; either "
            "loads)")


def check_stop_signal(key: str, name: str) -> None:
    from ..runtime.signals import stop_signal_number

    try:
        stop_signal_number(name)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None


def check_run(cfg: RunConfig, *, check_paths: bool = True) -> None:
    """The rules that span keys, and those that ask the machine (paths, CUDA, DALI), before any work starts."""
    check_model("model.name", cfg.model.name)
    used_teachers = cfg.teachers if METHODS[cfg.method.name].uses_given_teachers else []  # baseline drops them
    for i, teacher in enumerate(used_teachers):
        key = f"teachers.{i}"
        check_model(f"{key}.name", teacher.name)
        if teacher.checkpoint and teacher.weights:
            raise ConfigError(f"{key} ({teacher.name}): give checkpoint or weights, not both (checkpoint "
                              f"{teacher.checkpoint!r}, weights {teacher.weights!r}): {both_sources_hint(key)}")
        if not teacher.checkpoint and not teacher.weights:
            raise ConfigError(f"{key} ({teacher.name}) needs a checkpoint (local file) or weights (a weights name "
                              "the model zoo knows); an untrained teacher teaches nothing")
        if teacher.weights:
            check_weights(f"{key}.weights", teacher.name, teacher.weights)
        if check_paths and teacher.checkpoint and not Path(teacher.checkpoint).is_file():
            raise ConfigError(f"{key}.checkpoint {teacher.checkpoint!r} does not exist"
                              f"{missing_checkpoint_hint(teacher)}")
    if METHODS[cfg.method.name].requires_teachers and not cfg.teachers:
        raise ConfigError(f"method.name={cfg.method.name!r} needs at least one entry in teachers")

    data = cfg.data
    if data.dataset == "synthetic":
        if data.num_classes is None:
            raise ConfigError("data.num_classes is required for data.dataset=synthetic")
    elif data.num_classes is not None:
        raise ConfigError(f"data.num_classes is for data.dataset=synthetic only; {data.dataset} reads its "
                          "classes from the data")
    elif check_paths and not data.download and not Path(data.root).exists():
        raise ConfigError(f"data.root {data.root!r} does not exist (dataset {data.dataset}); "
                          "point data.root at the data or set data.download=true for CIFAR")
    if data.dataset != "imagefolder" and data.augment != AugmentConfig():
        raise ConfigError(f"data.augment is for data.dataset=imagefolder (both backends); {data.dataset} has its "
                          f"own augmentation: remove data.augment (got {asdict(data.augment)})")
    if data.dataset == "imagefolder" and data.backend == "dali" and not dali_available():
        raise ConfigError("data.backend=dali needs NVIDIA DALI: pip install 'feed-fast[dali]' (or "
                          "nvidia-dali-cuda120 for CUDA 12); data.backend=torchvision works without it")

    schedule = cfg.schedule
    if schedule.warmup_epochs > schedule.epochs:
        raise ConfigError(f"schedule.warmup_epochs must be in [0, epochs={schedule.epochs}], "
                          f"got {schedule.warmup_epochs}")
    if sorted(schedule.milestones) != schedule.milestones:
        raise ConfigError(f"schedule.milestones must be increasing, got {schedule.milestones}")

    if data.global_batch_size is not None and cfg.train.accumulate != 1:
        raise ConfigError(f"give data.global_batch_size or train.accumulate, not both: with data.global_batch_size="
                          f"{data.global_batch_size} the micro-batches per step are derived (got train.accumulate="
                          f"{cfg.train.accumulate})")
    if cfg.train.stop_signal is not None:
        check_stop_signal("train.stop_signal", cfg.train.stop_signal)
    try:
        device = resolve_device(cfg.train.device)
    except ValueError as err:
        raise ConfigError(f"train.device: {err}") from None
    try:
        resolve_precision(cfg.train.precision, device)
    except ValueError as err:
        raise ConfigError(f"train.precision: {err}") from None
