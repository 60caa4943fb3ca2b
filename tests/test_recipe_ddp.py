"""The recipe switches under torchrun (2 gloo processes on the CPU): with train.accumulate=2 DDP all-reduces
gradients only in the backward of each optimizer step's last micro-batch (`no_sync` before it); the ranks end
with identical weights and an identical EMA (BatchNorm statistics included), the one rank 0 exports as
model_ema.pt; label smoothing rides along."""
import json
import os
import subprocess
import sys
import textwrap

import torch
import yaml
from _recipe import assert_same_tensors, run_config, save_teacher

WORKER = textwrap.dedent("""
    import json
    import os
    import sys
    import torch
    import yaml
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from feed_fast.engine import train
    from feed_fast.engine.step import TrainStep
    from feed_fast.engine.trainer import GenerationTrainer

    torch.set_num_threads(1)
    synced_at = []  # the micro-batch position (0 or 1) of every gradient all-reduce
    original_init, original_fit = TrainStep.__init__, GenerationTrainer.fit

    def init_with_recording_hook(self, *args, **kwargs):
        original_init(self, *args, **kwargs)

        def recording(state, bucket):
            synced_at.append(self.micro)
            return allreduce_hook(None, bucket)

        self.module.register_comm_hook(None, recording)

    def fit_and_dump(self, *args, **kwargs):
        result = original_fit(self, *args, **kwargs)
        torch.save({"student": self.student.state_dict(), "extras": self.distiller.state_dict(),
                    "ema": self.ema.model.state_dict()}, f"{sys.argv[3]}/rank{self.dist.rank}.pt")
        return result

    TrainStep.__init__, GenerationTrainer.fit = init_with_recording_hook, fit_and_dump
    summary = train(yaml.safe_load(open(sys.argv[1])), sys.argv[2])
    rank = int(os.environ["RANK"])
    open(f"{sys.argv[3]}/rank{rank}.json", "w").write(json.dumps({"synced_at": synced_at,
                                                                  "val_ema": summary["history"][-1]["val_ema"]}))
""")


def test_accumulation_syncs_once_per_optimizer_step_and_the_ema_agrees_across_ranks(tmp_path):
    teacher = save_teacher(tmp_path / "teacher.pt")
    cfg = run_config("pfeed", [teacher], accumulate=2, label_smoothing=0.1, max_steps_per_epoch=2, progress="lines",
                     ema={"enabled": True, "decay": 0.6})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "worker.py").write_text(WORKER)
    dumps, run = tmp_path / "dumps", tmp_path / "run"
    dumps.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "worker.py"), str(tmp_path / "cfg.yaml"), str(run), str(dumps)],
        check=False, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]

    results = [json.loads((dumps / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in results:  # 2 epochs x 2 optimizer steps, each synced in its 2nd micro-batch only
        assert result["synced_at"] and set(result["synced_at"]) == {1}
        assert len(result["synced_at"]) % 4 == 0
    assert results[0]["val_ema"] == results[1]["val_ema"]

    rank0, rank1 = (torch.load(dumps / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for part in ("student", "extras", "ema"):
        assert_same_tensors(rank0[part], rank1[part], part)
    assert not torch.equal(rank0["ema"]["head.fc.weight"], rank0["student"]["head.fc.weight"])  # a real average
    assert_same_tensors(torch.load(run / "model_ema.pt", weights_only=True)["state_dict"], rank0["ema"], "export")
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["ema"]["steps"] == 4 and last["scheduler"]["last_epoch"] == 4
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1] and all("val_ema" in r for r in records)
