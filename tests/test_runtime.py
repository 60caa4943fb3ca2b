"""The runtime decides once and the rest follows: the device, the memory format the loaders serve and the
model is stored in (train.channels_last), determinism switches that last as long as the run, and step
sections that must be named by the clock's constants."""
from __future__ import annotations

import pytest
import torch

from feed_fast.config import RunConfig
from feed_fast.engine import train
from feed_fast.engine.step import TrainStep
from feed_fast.runtime import determinism, memory_format_for, resolve_device
from feed_fast.runtime.timing import LOSS, SECTIONS, StepTimer, no_timer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"widths": [4, 8, 16]}


def tiny_run(**train_section):
    return {
        "model": {"name": "resnet8", "kwargs": TINY},
        "method": {"name": "baseline"},
        "data": {"dataset": "synthetic", "root": "", "num_classes": 5, "batch_size": 8, "eval_batch_size": 8,
                 "image_size": 16},
        "schedule": {"name": "constant", "epochs": 1, "milestones": []},
        "train": {"device": "cpu", "progress": "none", "max_steps_per_epoch": 2, **train_section},
    }


@pytest.fixture
def seen_by_the_step(monkeypatch):
    """What each training step received, and the layout of the student's first conv weight then."""
    seen = []
    original = TrainStep.__call__

    def record(self, images, labels):
        weight = next(p for p in self.student.parameters() if p.dim() == 4)
        seen.append({"images_nhwc": images.is_contiguous(memory_format=torch.channels_last),
                     "images_nchw": images.is_contiguous(),
                     "weight_nhwc": weight.is_contiguous(memory_format=torch.channels_last),
                     "deterministic": torch.are_deterministic_algorithms_enabled(),
                     "cudnn_benchmark": torch.backends.cudnn.benchmark})
        return original(self, images, labels)

    monkeypatch.setattr(TrainStep, "__call__", record)
    return seen


def test_devices_are_resolved_in_one_place():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda' was asked for, but CUDA is not available here"):
            resolve_device("cuda")
    assert memory_format_for(torch.device("cpu"), "auto") == torch.contiguous_format
    assert memory_format_for(torch.device("cpu"), True) == torch.channels_last
    assert memory_format_for(torch.device("cuda", 0), False) == torch.contiguous_format


@pytest.mark.parametrize("channels_last", [True, False])
def test_the_loader_serves_the_layout_the_runtime_chose_for_the_model(tmp_path, seen_by_the_step, channels_last):
    """CPU twin of the GPU case below: the batches' layout follows train.channels_last, as the model's does."""
    train(tiny_run(channels_last=channels_last), tmp_path)
    assert seen_by_the_step
    for step in seen_by_the_step:
        assert step["images_nhwc"] == step["weight_nhwc"] == channels_last
        assert step["images_nchw"] == (not channels_last)


@pytest.mark.gpu
def test_channels_last_false_on_a_gpu_sends_nchw_batches_to_an_nchw_model(tmp_path, seen_by_the_step):
    train(tiny_run(device="cuda", channels_last=False, precision="fp32"), tmp_path)
    assert all(s["images_nchw"] and not s["weight_nhwc"] for s in seen_by_the_step)


@pytest.mark.parametrize("deterministic", [True, False])
def test_determinism_switches_last_as_long_as_the_run(tmp_path, seen_by_the_step, deterministic):
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    train(tiny_run(deterministic=deterministic), tmp_path)
    assert all(s["deterministic"] == deterministic and s["cudnn_benchmark"] == (not deterministic)
               for s in seen_by_the_step)
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    assert after == before


def test_determinism_is_restored_after_an_error():
    before = torch.are_deterministic_algorithms_enabled()
    with pytest.raises(RuntimeError, match="boom"), determinism(not before):
        assert torch.are_deterministic_algorithms_enabled() != before
        raise RuntimeError("boom")
    assert torch.are_deterministic_algorithms_enabled() == before


def test_step_sections_are_the_named_constants():
    timer = StepTimer(torch.device("cpu"))
    with timer(LOSS):
        pass
    timer.step_done()
    assert set(timer.collect()) == set(SECTIONS)
    for misspelled in ("los", "student-forward"):
        with pytest.raises(ValueError, match="unknown step section"), timer(misspelled):
            pass
        with pytest.raises(ValueError, match="unknown step section"):
            timer.add_ms(misspelled, 1.0)
        with pytest.raises(ValueError, match="unknown step section"):
            no_timer(misspelled)


def test_a_channels_last_cpu_run_trains_without_onednn_and_puts_it_back(tmp_path):
    """torch 2.14.1's oneDNN convolution backward on channels-last CPU tensors corrupts the heap at one thread
    (a 1x1 stride-2 conv: `double free or corruption`); the runtime turns oneDNN off for such a run only."""
    from feed_fast.runtime import open_runtime

    before = torch.backends.mkldnn.enabled
    options = RunConfig.from_dict(tiny_run(channels_last=True), check_paths=False).train
    with open_runtime(options, handle_signals=False):
        assert not torch.backends.mkldnn.enabled
    assert torch.backends.mkldnn.enabled == before
    options = RunConfig.from_dict(tiny_run(channels_last=False), check_paths=False).train
    with open_runtime(options, handle_signals=False):
        assert torch.backends.mkldnn.enabled == before


def test_compile_backend_applies_to_the_engine_s_units_inside_the_block_only(monkeypatch):
    from feed_fast.runtime import device as device_module

    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs) or fn)
    unit = lambda x: x
    with device_module.compile_backend("aot_eager"):
        device_module.compile_for(unit, torch.device("cpu"), fullgraph=True)
    device_module.compile_for(unit, torch.device("cpu"), fullgraph=True)
    assert seen[0] == {"fullgraph": True, "backend": "aot_eager"}  # Inductor's options are Inductor's alone
    assert seen[1] == {"fullgraph": True, "options": {"layout_optimization": False}}
