"""`train.check_teachers` (issue #17 item 1): before distilling, each teacher and their ensemble are scored on the
val split the student is scored on; the scores are printed in the start block, kept in teachers.json, epoch 0's
record of metrics.jsonl and summary.json, once per run (a resume reads them back); a teacher near chance or under
half the best one's top-1 is named in a one-line warning. Tiny runs on the synthetic loader: a ResNet-8 trained
for three epochs reads its classes perfectly, an untrained one sits at chance."""
from __future__ import annotations

import json

import pytest
import torch
from _recipe import run_config, save_teacher

from feed_fast.engine import resume, teacher_check, train
from feed_fast.engine.teacher_check import near_chance, weak_teachers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory) -> tuple[str, float]:
    """(model.pt, its final val top-1) of a ResNet-8 trained alone on the synthetic classes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    raw = run_config("baseline", epochs=3, batch_size=16)
    raw["optim"]["lr"] = 0.1
    run = tmp_path_factory.mktemp("teacher") / "run"
    summary = train(raw, run)
    torch.set_num_threads(threads)
    assert summary["final_top1"] > 2 * near_chance(5)
    return str(run / "model.pt"), summary["final_top1"]


def test_teachers_are_scored_once_before_distilling_and_one_at_chance_is_named(tmp_path, trained_teacher, capsys,
                                                                               monkeypatch):
    good, good_top1 = trained_teacher
    untrained = save_teacher(tmp_path / "untrained.pt")
    run = tmp_path / "run"
    cfg = run_config("kd", [good, untrained], epochs=2, progress="epochs")
    capsys.readouterr()
    assert train(cfg, run, max_epochs=1)["interrupted"]
    err = capsys.readouterr().err
    record = json.loads((run / "teachers.json").read_text())
    first, second = record["teachers"]
    assert (first["name"], first["source"], first["top1"]) == ("resnet8", good, good_top1)  # the student's val split
    assert second["source"] == untrained and second["top1"] < near_chance(5)
    assert second["top1"] < record["ensemble"]["top1"] <= 100 and record["samples"] == 160
    assert record["num_classes"] == 5 and record["chance_top1"] == 20.0
    assert f"  teacher 0  resnet8 ({good}): val top-1 {good_top1:.2f}%" in err.splitlines()
    assert f"  ensemble   mean of the teachers' softmax outputs: val top-1 {record['ensemble']['top1']:.2f}% (160 val " \
           "images, chance 20.00%)" in err.splitlines()
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert warnings == [(f"feed-fast train: warning: teachers.1 (resnet8, {untrained}) scores val top-1 "
                        f"{second['top1']:.2f}%, near chance (20.00% for 5 classes): an untrained model, another "
                        "model's checkpoint, or one trained with another class order, normalisation or image size "
                        "than this run's? It would teach nothing")]
    assert record["warnings"] == [warnings[0].removeprefix("feed-fast train: warning: ")]

    # the resume reads the scores back: nothing is scored again, and the block and the warning say the same
    def scored_again(*args, **kwargs):
        raise AssertionError("the teachers were scored again")

    monkeypatch.setattr(teacher_check, "evaluate_many", scored_again)
    done = resume(run)
    err = capsys.readouterr().err
    assert "(160 val images, chance 20.00%; checked at the run's start (teachers.json))" in err and warnings[0] in err
    assert done["teacher_check"] == record
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    assert records[0]["teacher_check"] == record and "teacher_check" not in records[1]
    assert json.loads((run / "summary.json").read_text())["teacher_check"] == record


def test_check_teachers_false_skips_it(tmp_path, capsys):
    teacher = save_teacher(tmp_path / "teacher.pt")
    capsys.readouterr()
    summary = train(run_config("pfeed", [teacher], epochs=1, progress="epochs", check_teachers=False), tmp_path / "run")
    err = capsys.readouterr().err
    assert "  teachers   not scored (train.check_teachers: false)" in err.splitlines() and "warning" not in err
    assert summary["teacher_check"] is None and "teacher_check" not in summary["history"][0]
    assert not (tmp_path / "run" / "teachers.json").exists()


def test_sfeed_scores_its_configured_teachers_for_the_first_generation_only(tmp_path, trained_teacher):
    raw = run_config("sfeed", [trained_teacher[0]], epochs=1)
    raw["method"]["generations"] = 2
    summary = train(raw, tmp_path / "run")
    first, second = summary["generations"]
    assert first["history"][0]["teacher_check"] == summary["teacher_check"]
    assert "teacher_check" not in second["history"][0]  # its teacher, generation 1's student, was scored as such
    assert [t["top1"] for t in summary["teacher_check"]["teachers"]] == [trained_teacher[1]]
    assert (tmp_path / "run" / "teachers.json").is_file() and not summary["teacher_check"]["warnings"]


def test_the_warning_rules():
    assert [near_chance(c) for c in (1000, 100, 10, 5, 2)] == [0.2, 2.0, 20.0, 40.0, 62.5]

    def entries(*top1):
        return [{"index": i, "name": "resnet34", "source": f"t{i}.pt", "top1": t} for i, t in enumerate(top1)]

    lines = weak_teachers(entries(80.0, 39.0, 12.0, 41.0), num_classes=10)
    assert [line.split(" scores")[0] for line in lines] == ["teachers.1 (resnet34, t1.pt)", "teachers.2 (resnet34, t2.pt)"]
    assert "under half the best teacher's (teachers.0: 80.00%)" in lines[0] and "near chance (10.00% for 10" in lines[1]
    assert weak_teachers(entries(0.15), num_classes=1000)[0].startswith("teachers.0 (resnet34, t0.pt) scores val top-1 "
                                                                        "0.15%, near chance (0.10% for 1000 classes)")
    assert weak_teachers(entries(75.0, 70.0, 73.0), num_classes=1000) == []
