"""docs/methods.md's "Add a method" example (linked from the README), run as written: its file's code plus
the one registry line is all a new method takes for the config to accept its name (and refuse it without teachers) and for the engine to train it.
A fresh interpreter registers it before the config is imported, as a new file in feed_fast/methods/ would be."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from feed_fast.engine.checkpoint import student_export
from feed_fast.models import build_model

METHODS_DOC = Path(__file__).resolve().parent.parent / "docs" / "methods.md"  # linked from the README

RUN = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    import feed_fast.methods as methods
    namespace = {}
    exec(compile(open(sys.argv[1]).read(), "mean_feature.py", "exec"), namespace)
    methods.METHODS["mean_feature"] = namespace["MeanFeatureMethod"]  # the registry line
    from feed_fast.config import ConfigError
    from feed_fast.engine import train
    cfg = json.loads(sys.argv[2])
    try:
        train({**cfg, "teachers": []}, sys.argv[3] + "/refused")
    except ConfigError as error:
        refused = str(error)
    summary = train(cfg, sys.argv[3] + "/run")
    print(json.dumps({"refused": refused, "loss": summary["history"][0]["loss"]}))
""")


def readme_example() -> str:
    section = METHODS_DOC.read_text().split("# Add a method", 1)[1]
    code = re.search(r"```python\n(# feed_fast/methods/mean_feature.py\n.*?)```", section, re.DOTALL).group(1)
    return code.replace("from .base import", "from feed_fast.methods.base import")  # run outside the package


def test_the_readme_example_is_one_file_and_one_registry_line(tmp_path):
    assert 'METHODS = {..., "mean_feature": MeanFeatureMethod}' in METHODS_DOC.read_text()
    (tmp_path / "mean_feature.py").write_text(readme_example())
    torch.manual_seed(0)
    teacher = build_model("resnet8", 5, widths=(4, 8, 16))
    torch.save(student_export("resnet8", 5, {"widths": [4, 8, 16]}, teacher), tmp_path / "teacher.pt")
    cfg = {
        "model": {"name": "resnet8", "kwargs": {"widths": [4, 8, 16]}},
        "teachers": [{"name": "resnet8", "checkpoint": str(tmp_path / "teacher.pt"), "kwargs": {"widths": [4, 8, 16]}}],
        "method": {"name": "mean_feature", "beta": 2.0},
        "data": {"dataset": "synthetic", "root": "", "num_classes": 5, "batch_size": 8, "eval_batch_size": 8,
                 "image_size": 16},
        "schedule": {"name": "constant", "epochs": 1, "milestones": []},
        "train": {"device": "cpu", "progress": "none", "max_steps_per_epoch": 2},
    }
    result = subprocess.run([sys.executable, "-c", RUN, str(tmp_path / "mean_feature.py"), json.dumps(cfg),
                             str(tmp_path)], capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert "method.name='mean_feature' needs at least one entry in teachers" in outcome["refused"]
    assert set(outcome["loss"]) == {"ce", "mse", "total"} and outcome["loss"]["mse"] > 0
