"""The op is one package: `feed_fast.ops` holds its Python layer, the public names stay on `feed_fast`, and
importing the op pulls in neither the trainer nor the loaders (a user's own training loop gets the op alone)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import feed_fast
import feed_fast.ops

OP_MODULES = ("functional", "fused", "hybrid", "reference", "backend_choice", "head", "numerics", "validation",
              "loss", "translator")


def test_public_names_come_from_the_ops_package():
    for name in ("feed_loss", "FEEDLoss", "FEEDLossOutput", "Translator", "TranslatorGroup"):
        assert getattr(feed_fast, name) is getattr(feed_fast.ops, name)
        assert getattr(feed_fast, name).__module__.startswith("feed_fast.ops."), name


def test_the_op_modules_live_in_ops_and_nowhere_else():
    top = Path(feed_fast.__file__).parent
    ops = Path(feed_fast.ops.__file__).parent
    for module in OP_MODULES:
        assert (ops / f"{module}.py").is_file(), module
        assert not (top / f"{module}.py").exists(), f"feed_fast/{module}.py is back at the top level"


def test_importing_the_op_loads_no_trainer_loader_or_triton():
    code = ("import sys, feed_fast; from feed_fast import FEEDLoss, feed_loss; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('feed_fast', 'triton')))))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert "feed_fast.ops.functional" in loaded
    heavy = [m for m in loaded if m.startswith(("feed_fast.engine", "feed_fast.loaders", "feed_fast.methods",
                                                 "feed_fast.config", "feed_fast.demo", "triton"))]
    assert not heavy, f"`import feed_fast` pulled in {heavy}"


def test_torchvision_is_imported_only_for_a_torchvision_model():
    """torchvision brings torch._dynamo with it (seconds of every CLI start on 2 cores): a CIFAR model, and the
    CLI's refusals before any training, go without it."""
    code = ("import sys; from feed_fast.engine import cli; from feed_fast.models import build_model, "
            "check_model_name; build_model('resnet8', 10); check_model_name('wrn_16_2'); "
            "print('torchvision' in sys.modules); build_model('resnet18', 10); print('torchvision' in sys.modules)")
    lines = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert lines == ["False", "True"]
