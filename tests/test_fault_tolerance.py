"""What really happens to runs, tried through the `feed-fast` command as a user would (a subprocess, its exit
code, its stderr, the files it leaves): a crash at any moment, a damaged checkpoint, a reused --out folder, an
unwritable folder, a full disk, a moved run folder, a broken image. Runs are tiny (ResNet-8 on synthetic data,
two steps per epoch)."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from feed_fast.cli import main
from tests._loader_data import corrupt_jpeg, make_image_folder

TINY = {
    "model": {"name": "resnet8", "kwargs": {"widths": [4, 8, 16]}},
    "method": {"name": "baseline"},
    "data": {"dataset": "synthetic", "root": "", "num_classes": 5, "batch_size": 16, "eval_batch_size": 32,
             "image_size": 16},
    "schedule": {"name": "cosine", "epochs": 3, "milestones": []},
    "optim": {"lr": 0.05},
    "train": {"device": "cpu", "progress": "none", "log_every": 1, "max_steps_per_epoch": 2},
}
FILE_SIZE_LIMIT = resource.RLIMIT_FSIZE


def feed_fast(*args, file_size_limit: int | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    """`feed-fast ARGS` in a fresh process; `file_size_limit` (bytes) stands in for a full disk."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}

    def limit_file_size():  # runs in the child: every file it writes stops at this size (EFBIG)
        resource.setrlimit(FILE_SIZE_LIMIT, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, "-m", "feed_fast.cli", *map(str, args)], check=False, capture_output=True,
                          text=True, env=env, timeout=timeout,
                          preexec_fn=limit_file_size if file_size_limit else None)


def in_process(capsys, *args) -> subprocess.CompletedProcess:
    """The same command through feed_fast.cli.main in this process (no start-up cost): for the variants of a
    case whose first variant runs as a subprocess. An uncaught exception fails the test as a traceback would."""
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def assert_one_line_error(proc, code: int = 2) -> str:
    """Exit `code`, one line on stderr and no traceback; returns the line."""
    assert proc.returncode == code, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "weights_only" not in lines[0]  # never the advice to load a checkpoint unsafely
    return lines[0]


def epochs_in(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoint(path) -> dict:
    return torch.load(path, weights_only=True)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outcome(record: dict) -> tuple:
    """What an epoch's record must repeat exactly after a resume (timings and speeds may differ)."""
    return record["epoch"], record["loss"], record.get("val")


def assert_same_student(a, b) -> None:
    sa, sb = checkpoint(a)["state_dict"], checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished three-epoch run (config file, run folder): what every test below damages a copy of."""
    root = tmp_path_factory.mktemp("finished")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = root / "run"
    proc = feed_fast("train", config, "--out", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return config, run


def copy_run(finished, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(finished[1], target)
    return target


def test_a_finished_run_keeps_the_previous_last_pt_beside_the_newest(finished):
    _, run = finished
    assert epochs_in(run) == [0, 1, 2]
    assert checkpoint(run / "last.pt")["epoch"] == 3 and checkpoint(run / "last.prev.pt")["epoch"] == 2
    assert [r["epoch"] for r in checkpoint(run / "last.pt")["history"]] == [0, 1, 2]
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")]
    # best.pt and last.pt are one stored file exactly when they hold the same epoch
    same_epoch = checkpoint(run / "best.pt")["epoch"] == checkpoint(run / "last.pt")["epoch"]
    assert os.path.samefile(run / "best.pt", run / "last.pt") == same_epoch


# --- 1. metrics.jsonl and the checkpoint never disagree -------------------------------------------------------
def metrics_text(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("crash", ["after the first metrics line, before the first last.pt",
                                   "after a metrics line newer than last.pt, mid-line",
                                   "after last.pt, before its metrics line"])
def test_a_resumed_run_holds_each_epoch_once_matching_its_checkpoint(finished, tmp_path, capsys, crash):
    _, done = finished
    reference = [json.loads(line) for line in (done / "metrics.jsonl").read_text().splitlines()]
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(done / "config.yaml", run)
    # The on-disk state a crash at that moment leaves (the runs are deterministic, so a finished run's files
    # are what the crashed run had written by then).
    if crash.startswith("after the first metrics line"):
        (run / "metrics.jsonl").write_text(metrics_text(reference[:1]))
    elif crash.startswith("after a metrics line newer"):
        shutil.copy(done / "last.prev.pt", run / "last.pt")  # after epoch 2 of 3
        (run / "metrics.jsonl").write_text(metrics_text(reference) + '{"epoch": 3, "lo')
    else:
        shutil.copy(done / "last.prev.pt", run / "last.pt")
        (run / "metrics.jsonl").write_text(metrics_text(reference[:1]))

    first = crash.startswith("after the first metrics line")
    proc = feed_fast("train", "--resume", run) if first else in_process(capsys, "train", "--resume", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in resumed] == [0, 1, 2]
    assert [outcome(r) for r in resumed] == [outcome(r) for r in reference]
    assert [outcome(r) for r in checkpoint(run / "last.pt")["history"]] == [outcome(r) for r in resumed]
    assert_same_student(run / "model.pt", done / "model.pt")


# --- 2. a damaged checkpoint is refused in one line, and is never the only copy ----------------------------------
def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "wrong model":  # a checkpoint of a wider student
        ckpt = torch.load(path, weights_only=True)
        ckpt["student"]["head.fc.weight"] = torch.zeros(5, 32)
        torch.save(ckpt, path)


PROBLEM = {"truncated": "is truncated", "garbage": "is not a torch checkpoint", "empty": "is empty (0 bytes)",
           "wrong model": "does not fit this run's student (resnet8)"}


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("how", list(PROBLEM))
def test_resume_refuses_a_damaged_last_pt_naming_it_and_what_is_beside_it(finished, tmp_path, capsys, how):
    run = copy_run(finished, tmp_path)
    (run / "summary.json").unlink()  # an unfinished run: resume must read last.pt
    damage(run / "last.pt", how)
    before = digest(run / "last.pt")
    args = ("train", "--resume", run)
    line = assert_one_line_error(feed_fast(*args) if how == "truncated" else in_process(capsys, *args))
    assert line.startswith("feed-fast train: error: checkpoint") and str(run / "last.pt") in line
    assert PROBLEM[how] in line
    if how == "wrong model":
        assert "'head.fc.weight' ((5, 32) in the file, (5, 16) in the model)" in line
    else:
        assert "readable beside it: last.prev.pt (after epoch 2), best.pt (after epoch" in line
        assert "copy one over last.pt to resume from it" in line
    assert digest(run / "last.pt") == before  # left as it was


def test_the_previous_last_pt_resumes_a_run_whose_newest_one_is_damaged(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    for name in ("summary.json", "model.pt"):
        (run / name).unlink()
    damage(run / "last.pt", "truncated")
    shutil.copy(run / "last.prev.pt", run / "last.pt")  # what the refusal above advises
    proc = feed_fast("train", "--resume", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert epochs_in(run) == [0, 1, 2]
    assert_same_student(run / "model.pt", finished[1] / "model.pt")


def test_eval_refuses_a_damaged_export_naming_readable_checkpoints_beside_it(finished, tmp_path):
    run = copy_run(finished, tmp_path)
    damage(run / "model.pt", "garbage")
    line = assert_one_line_error(feed_fast("eval", "--checkpoint", run / "model.pt", "--data", "unused"))
    assert line.startswith(f"feed-fast eval: error: checkpoint '{run / 'model.pt'}' is not a torch checkpoint")
    assert "readable beside it: last.pt (after epoch 3), last.prev.pt (after epoch 2), best.pt" in line


def test_a_damaged_teacher_checkpoint_is_refused_before_the_run_starts(finished, tmp_path):
    _, run = finished
    teacher = tmp_path / "teacher" / "model.pt"
    teacher.parent.mkdir()
    shutil.copy(run / "model.pt", teacher)
    shutil.copy(run / "best.pt", teacher.parent / "best.pt")
    damage(teacher, "truncated")
    config = tmp_path / "pfeed.yaml"
    config.write_text(yaml.safe_dump({**TINY, "method": {"name": "pfeed", "backend": "torch"}, "teachers": [
        {"name": "resnet8", "checkpoint": str(teacher), "kwargs": {"widths": [4, 8, 16]}}]}))
    out = tmp_path / "pfeed"
    line = assert_one_line_error(feed_fast("train", config, "--out", out))
    assert line.startswith(f"feed-fast train: error: teachers.0 (resnet8): checkpoint '{teacher}' is truncated")
    assert "readable beside it: best.pt (after epoch" in line
    assert not (out / "config.yaml").exists()  # no run was started: the fixed command can run as it is


@pytest.mark.usefixtures("one_torch_thread")
def test_a_damaged_sfeed_generation_is_refused_and_its_last_pt_replaces_it(tmp_path, capsys):
    config = tmp_path / "sfeed.yaml"
    config.write_text(yaml.safe_dump({**TINY, "method": {"name": "sfeed", "generations": 2, "backend": "torch"},
                                      "schedule": {"name": "cosine", "epochs": 1, "milestones": []}}))
    run = tmp_path / "run"
    first = in_process(capsys, "train", config, "--out", run)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("summary.json", "gen2"):  # gen1 finished, gen2 to train again
        shutil.rmtree(run / name) if name == "gen2" else (run / name).unlink()
    damage(run / "gen1" / "model.pt", "truncated")
    line = assert_one_line_error(feed_fast("train", "--resume", run))
    assert f"checkpoint '{run / 'gen1' / 'model.pt'}' is truncated" in line
    assert "readable beside it: last.pt (after epoch 1)" in line
    assert "the generation's final last.pt holds the same student: copy it over model.pt" in line

    shutil.copy(run / "gen1" / "last.pt", run / "gen1" / "model.pt")  # as advised
    proc = in_process(capsys, "train", "--resume", run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert epochs_in(run / "gen2") == [0] and (run / "gen2" / "model.pt").exists()


# --- 3. an --out folder that holds a run ------------------------------------------------------------------------
@pytest.mark.usefixtures("one_torch_thread")
def test_out_on_a_folder_holding_a_run_is_refused_until_overwrite(finished, tmp_path, capsys):
    config, _ = finished
    run = copy_run(finished, tmp_path)
    (run / "notes.txt").write_text("mine")
    before = {name: digest(run / name) for name in ("last.pt", "best.pt", "metrics.jsonl")}
    line = assert_one_line_error(feed_fast("train", config, "--out", run))
    assert f"'{run}' already holds a run (" in line
    assert f"continue it with `feed-fast train --resume {run}` (or this command with --auto-resume), or start " \
           "over with --overwrite" in line
    assert {name: digest(run / name) for name in before} == before

    proc = in_process(capsys, "train", config, "--out", run, "--overwrite", "--set", "schedule.epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert epochs_in(run) == [0] and checkpoint(run / "last.pt")["epoch"] == 1
    assert not (run / "last.prev.pt").exists()  # the old run's files went; the new one has written one last.pt
    assert (run / "notes.txt").read_text() == "mine"  # files that are not the run's stay


def test_resume_takes_no_overwrite(finished, capsys):
    assert main(["train", "--resume", str(finished[1]), "--overwrite"]) == 2  # in-process: an argument check
    assert "--resume RUN_DIR takes no CONFIG, --overwrite or --auto-resume" in capsys.readouterr().err


# --- 4. output paths checked first; a full disk -----------------------------------------------------------------
def test_an_out_folder_that_cannot_be_created_is_refused_before_any_work(finished, tmp_path, capsys):
    config, _ = finished
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["train", str(config), "--out", str(blocker / "run")]) == 2  # in-process: nothing starts
    assert capsys.readouterr().err == (f"feed-fast train: error: run folder '{blocker / 'run'}' cannot be written: "
                                       f"{blocker} is a file, not a folder\n")


@pytest.mark.usefixtures("one_torch_thread")
def test_a_full_disk_stops_the_run_in_one_line_and_it_resumes_once_there_is_room(finished, tmp_path, capsys):
    _, done = finished
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(done / "config.yaml", run)
    shutil.copy(done / "last.prev.pt", run / "last.pt")  # the run after epoch 2 of 3
    good = digest(run / "last.pt")
    limit = (run / "last.pt").stat().st_size // 2  # config.yaml, metrics.jsonl and events fit, checkpoints do not

    for _ in range(2):  # the disk is full, and still full on a first attempt to resume
        line = assert_one_line_error(feed_fast("train", "--resume", run, file_size_limit=limit), code=1)
        assert line.startswith(f"feed-fast train: error: cannot write {run}/")
        assert ".pt: File too large (errno 27); every file is replaced whole" in line
        assert f"`feed-fast train --resume {run}` continues from the last checkpoint" in line
        assert digest(run / "last.pt") == good  # the last good checkpoint is intact...
        assert epochs_in(run) == [0, 1]  # ...and the metrics still match it
        assert not [p for p in os.listdir(run) if p.endswith(".tmp")]

    proc = in_process(capsys, "train", "--resume", run)  # space is back
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert epochs_in(run) == [0, 1, 2]
    assert_same_student(run / "model.pt", done / "model.pt")


# --- 6. a finished run moved elsewhere --------------------------------------------------------------------------
@pytest.mark.usefixtures("one_torch_thread")
def test_resuming_a_moved_finished_run_reports_its_new_folder_without_nesting(finished, tmp_path, capsys):
    moved = copy_run(finished, tmp_path, "moved")
    for attempt in range(2):
        proc = feed_fast("train", "--resume", moved) if attempt == 0 else in_process(capsys, "train", "--resume", moved)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().endswith(f"export {moved / 'model.pt'}")
    summary = json.loads((moved / "summary.json").read_text())
    assert summary["run_dir"] == str(moved) and summary["export"] == str(moved / "model.pt")
    assert len(summary["generations"]) == 1 and "generations" not in summary["generations"][0]
    assert summary["generations"][0]["run_dir"] == str(moved)


# --- a broken image -------------------------------------------------------------------------------------------
def advised_command(line: str) -> list[str]:
    """The `feed-fast ...` command an error line advises, as arguments for `main`."""
    return shlex.split(line.split("`")[1])[1:]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_broken_image_ends_the_run_in_one_line_and_its_advice_works_as_written(tmp_path, capsys):
    paths = make_image_folder(str(tmp_path / "data"), per_class=3)
    victim = paths["train"][4]
    corrupt_jpeg(victim)
    config = tmp_path / "folder.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data": {"dataset": "imagefolder", "root": str(tmp_path / "data"),
                                                       "backend": "torchvision", "batch_size": 4,
                                                       "eval_batch_size": 4, "image_size": 16,
                                                       "num_threads": 2},
                                      "schedule": {**TINY["schedule"], "epochs": 1},
                                      "train": {**TINY["train"], "max_steps_per_epoch": None}}))  # every image
    run = tmp_path / "run"
    line = assert_one_line_error(feed_fast("train", config, "--out", run))
    assert line.startswith("feed-fast train: error: cannot decode 1 image file(s) in ")
    advice = f"`feed-fast train --resume {run} --set data.skip_corrupt=true` to leave unreadable images out"
    assert victim in line and advice in line

    with pytest.warns(RuntimeWarning, match=f"skipping unreadable image {victim}"):
        proc = in_process(capsys, *advised_command(line))  # as written
    assert proc.returncode == 0 and epochs_in(run) == [0], proc.stderr[-3000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["skip_corrupt"] is True  # recorded
    changed = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    assert [r["changed"] for r in changed if "changed" in r] == [{"data.skip_corrupt": [False, True]}]

    corrupt_jpeg(paths["val"][2])  # `feed-fast eval` on the same data: its own advice, followed as written
    line = assert_one_line_error(in_process(capsys, "eval", "--checkpoint", run / "model.pt", "--data",
                                            tmp_path / "data"))
    assert line.startswith("feed-fast eval: error: cannot decode 1 image file(s)") and "add --skip-corrupt" in line
    with pytest.warns(RuntimeWarning, match="skipping unreadable image"):
        proc = in_process(capsys, "eval", "--checkpoint", run / "model.pt", "--data", tmp_path / "data",
                          "--skip-corrupt")
    assert proc.returncode == 0 and "(11 images, resnet8)" in proc.stdout  # 12 less the broken one, proc.stderr


# --- the parts, in-process ------------------------------------------------------------------------------------
def test_a_refused_write_names_the_file_and_the_cause_and_keeps_the_old_file(tmp_path):
    from feed_fast.atomic_files import WriteFailed, atomic_save, atomic_write

    target = tmp_path / "last.pt"
    atomic_save({"a": torch.ones(2)}, target)

    def disk_full(file):  # what torch.save reports: a RuntimeError chained to the OSError
        try:
            raise OSError(28, os.strerror(28))
        except OSError as err:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed") from err

    with pytest.raises(WriteFailed) as caught:
        atomic_write(disk_full, target, keep_previous=tmp_path / "last.prev.pt")
    assert str(caught.value) == f"cannot write {target}: No space left on device (errno 28)"
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # old file intact, no temporary, no previous copy yet
    assert torch.equal(checkpoint(target)["a"], torch.ones(2))

    atomic_save({"a": torch.zeros(2)}, target, keep_previous=tmp_path / "last.prev.pt")
    assert torch.equal(checkpoint(target)["a"], torch.zeros(2))
    assert torch.equal(checkpoint(tmp_path / "last.prev.pt")["a"], torch.ones(2))
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # not mkstemp's 0600


def test_best_and_last_are_stored_once_and_a_later_last_pt_leaves_best_as_it_was(tmp_path):
    from feed_fast.atomic_files import atomic_copy, atomic_save

    best, last, previous = tmp_path / "best.pt", tmp_path / "last.pt", tmp_path / "last.prev.pt"
    atomic_save({"epoch": 1}, last)
    atomic_save({"epoch": 2}, best)
    atomic_copy(best, last, keep_previous=previous)
    assert os.path.samefile(best, last) and checkpoint(previous)["epoch"] == 1
    atomic_save({"epoch": 3}, last, keep_previous=previous)  # the next epoch, not a better one
    assert [checkpoint(p)["epoch"] for p in (best, last, previous)] == [2, 3, 2]
    assert not os.path.samefile(best, last)
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.prev.pt", "last.pt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Opaque:  # an object torch.load(weights_only=True) will not rebuild
    pass


def test_a_checkpoint_holding_other_python_objects_is_refused_without_unsafe_advice(tmp_path):
    from feed_fast.engine.checkpoint import CheckpointError, read_checkpoint

    torch.save({"weights": torch.ones(2), "object": Opaque()}, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(tmp_path / "pickled.pt")
    message = str(caught.value)
    assert "holds Python objects other than tensors, numbers and plain containers" in message
    assert "weights_only" not in message and "\n" not in message


def test_a_run_ignores_sigxfsz_so_a_file_size_limit_fails_the_write_and_puts_it_back_after():
    import signal

    from feed_fast.runtime import GracefulStop

    before = signal.getsignal(signal.SIGXFSZ)
    with GracefulStop():
        assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGXFSZ) == before
