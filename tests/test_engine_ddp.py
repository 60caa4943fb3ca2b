"""torchrun with 2 gloo processes on the CPU: DDP keeps the ranks' parameters identical, metrics are reduced
across ranks (validation counts every shard's samples), and the run directory is written once (rank 0)."""
import json
import os
import subprocess
import sys
import textwrap

import torch
import yaml

from feed_fast.engine.checkpoint import student_export
from feed_fast.models import build_model

WORKER = textwrap.dedent("""
    import json
    import os
    import sys
    import torch
    import yaml
    from feed_fast.engine import train
    from feed_fast.engine.trainer import GenerationTrainer

    torch.set_num_threads(1)
    original_fit = GenerationTrainer.fit

    def fit_and_dump_parameters(self, *args, **kwargs):
        result = original_fit(self, *args, **kwargs)
        state = {**self.student.state_dict(), **{"extra." + k: v for k, v in self.distiller.state_dict().items()}}
        torch.save(state, f"{sys.argv[3]}/rank{self.dist.rank}.pt")
        return result

    GenerationTrainer.fit = fit_and_dump_parameters
    summary = train(yaml.safe_load(open(sys.argv[1])), sys.argv[2])
    rank = int(os.environ["RANK"])
    last = summary["history"][-1]
    open(f"{sys.argv[3]}/rank{rank}.json", "w").write(json.dumps([last["val"], last["loss"]]))
""")


def test_two_gloo_processes_stay_in_sync_and_write_once(tmp_path):
    torch.manual_seed(3)
    teacher = build_model("resnet8", 5, widths=(4, 8, 32))
    torch.save(student_export("resnet8", 5, {"widths": [4, 8, 32]}, teacher), tmp_path / "teacher.pt")
    cfg = {
        "model": {"name": "resnet8", "kwargs": {"widths": [4, 8, 16]}},
        "teachers": [{"name": "resnet8", "checkpoint": str(tmp_path / "teacher.pt"),
                      "kwargs": {"widths": [4, 8, 32]}}],
        "method": {"name": "pfeed", "backend": "torch"},
        "data": {"dataset": "synthetic", "root": "", "num_classes": 5, "batch_size": 8, "eval_batch_size": 16,
                 "image_size": 16},
        "schedule": {"name": "cosine", "epochs": 2, "milestones": []},
        "optim": {"lr": 0.05},
        "train": {"device": "cpu", "progress": "lines", "log_every": 5, "max_steps_per_epoch": 4},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "worker.py").write_text(WORKER)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "worker.py"), str(tmp_path / "cfg.yaml"), str(run), str(dumps)],
        check=False, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]

    rank0 = torch.load(dumps / "rank0.pt", weights_only=True)
    rank1 = torch.load(dumps / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and any("translators" in k for k in rank0)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    initial = build_model("resnet8", 5, widths=(4, 8, 16)).state_dict()
    assert not torch.equal(initial["head.fc.weight"], rank0["head.fc.weight"])  # it did train

    results = [json.loads((dumps / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert results[0] == results[1]  # both ranks return the same reduced metrics
    assert results[0][0]["samples"] == 2 * 10 * 16  # validation counts both shards (10 batches of 16 each)

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]  # written once, not once per rank
    assert len(os.listdir(run / "tensorboard")) == 1
    assert proc.stderr.count("gen 1 epoch 2/2") == 1  # progress printed by rank 0 only
    check = json.loads((run / "teachers.json").read_text())  # the teacher scored once, sharded as the student
    assert check["samples"] == 2 * 10 * 16 and records[0]["teacher_check"] == check
    assert proc.stderr.count("  teacher 0  resnet8") == 1
    export = torch.load(run / "model.pt", weights_only=True)
    for key, value in export["state_dict"].items():
        assert torch.equal(value, rank0[key])
