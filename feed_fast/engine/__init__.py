"""The distillation engine: `train(config, out_dir) -> summary`, `resume(run_dir)`, `evaluate(model, loader)`.

The config is a nested dict, the same as a YAML file in configs/ (defaults in `engine.config.DEFAULTS`, every
key checked by `engine.config.resolve`; unknown keys, wrong types, unknown models and missing paths raise
`ConfigError` before any work starts):

    model:    {name: resnet56 | wrn_28_10 | resnext29_16x64d | resnet18 (torchvision) ..., kwargs: {}}
    teachers: [{name, checkpoint: FILE | null, weights: torchvision weights name | null, kwargs: {}}, ...]
    method:   {name: baseline | kd | pfeed | sfeed, beta: 500.0, generations: 2 (sfeed),
               feature_pool: none | adaptive, backend: auto | torch | triton | hybrid,
               translator: {width: null, final_kernel_size: 3, batch_norm: false, final_activation: true,
                            negative_slope: 0.1},
               kd: {enabled: false (adds KD to pfeed/sfeed; kd always uses it), weight: 1.0, temperature: 4.0}}
    data:     {dataset: cifar100 | cifar10 | imagefolder | synthetic, root: DIR, batch_size: 128 (per process),
               eval_batch_size: 256, image_size: 32, num_threads: 2, backend: auto, download: false,
               num_classes: null (synthetic only), skip_corrupt: false}
    optim:    {lr: 0.1, momentum: 0.9, nesterov: false, weight_decay: 5e-4, apex: false}
    schedule: {name: multistep | cosine | constant, epochs: 164, milestones: [82, 123], gamma: 0.1,
               warmup_epochs: 0, min_lr: 0.0}
    train:    {seed: 0, device: auto | cpu | cuda, precision: auto | bf16 | fp16 | fp32, channels_last: auto,
               compile: false, deterministic: false, log_every: 50, max_steps_per_epoch: null, eval_every: 1,
               progress: auto | bar | lines | none}

Run directory: config.yaml (resolved), metrics.jsonl (one line per epoch: loss parts, val top1/top5, lr,
images_per_sec, data_wait_fraction, step_ms breakdown), tensorboard/, last.pt, best.pt, student.pt (the
student alone, loadable with `load_student` or into the plain model class), summary.json. sFEED writes one
such directory per generation (gen1/, gen2/, ...) and a summary.json on top.

The summary returned by `train`: history (per-epoch records), best_top1, final_top1, student_params (the
deployed student: translators excluded), images_per_sec, step_breakdown_ms, interrupted, export, run_dir,
and `generations` (one such summary per generation; the top level is the last one's).
"""
from .api import load_student, resume, train
from .config import ConfigError, load_config, resolve
from .evaluate import evaluate

__all__ = ["ConfigError", "evaluate", "load_config", "load_student", "resolve", "resume", "train"]
