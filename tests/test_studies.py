"""Studies: the study file and its errors, member expansion, running with skip / resume / failure,
the report files, and the scaling fits on data with known parameters."""
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from vislab.cli import main
from vislab.studies import StudyError, load_study
from vislab.studies.fits import fit_curve
from vislab.studies.runner import Launcher, stage_command, stage_folders

TINY_RECIPE = {
    "_base_": str(Path(__file__).parents[1] / "configs" / "base" / "classification.yaml"),
    "model": {"name": "resnet18", "width": 0.125, "norm": "GN", "norm_groups": 4},
    "data": {"name": "digits", "image_size": 16, "val_resize": 16, "hflip": False, "batch_size": 16,
             "num_workers": 0, "max_train_samples": 48, "max_val_samples": 32},
    "optim": {"name": "adamw", "lr": 0.002},
    "schedule": {"warmup_epochs": 0},
    "train": {"epochs": 1, "log_every": 100, "eval_images": 0},
}


def _write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _study(tmp_path: Path, **changes) -> Path:
    _write(tmp_path / "tiny.yaml", TINY_RECIPE)
    study = {"name": "tiny", "recipe": "tiny.yaml", "overrides": ["train.epochs=1"],
             "axes": {"samples": {"key": "data.max_train_samples", "values": [16, 48]}},
             "seeds": [0], "metrics": ["val/top1", {"key": "val/top1", "name": "error", "scale": -100, "offset": 100}],
             "plot": {"x": "samples", "y": "error", "log_x": True}, "fits": {"x": "samples", "y": "error"}}
    study.update(changes)
    return _write(tmp_path / "study.yaml", study)


def test_members_are_the_grid_times_the_seeds(tmp_path):
    path = _study(tmp_path, axes={
        "norm": {"key": "model.norm", "values": ["GN", "BN"]},
        "batch": {"values": [{"label": 16, "set": {"data.batch_size": 16, "optim.lr": 0.002}},
                             {"label": 8, "set": {"data.batch_size": 8, "optim.lr": 0.001}}]}},
        seeds=[0, 1], plot={"x": "batch", "y": "error", "lines": "norm"}, fits={})
    study = load_study(path)
    assert len(study.members) == 8 and study.axes == ("norm", "batch")
    member = study.members[3]  # GN, batch 8, seed 1
    assert member.name == "norm-GN_batch-8_seed1" and member.labels == {"norm": "GN", "batch": 8}
    overrides = member.stages[0].overrides
    assert overrides[0] == "train.epochs=1"
    assert {"model.norm=GN", "data.batch_size=8", "optim.lr=0.001", "train.seed=1"} <= set(overrides)


@pytest.mark.parametrize("change,message", [
    ({"colour": 1}, "unknown key 'colour'"),
    ({"metrics": []}, "metrics must be a non-empty list"),
    ({"axes": {"n": {"values": [1, 2]}}, "plot": {}, "fits": {}}, "axes.n: a plain value (1) needs the axis's key"),
    ({"axes": {"n": {"key": "data.max_train_samples", "values": []}}, "plot": {}, "fits": {}},
     "axes.n.values must be a non-empty list"),
    ({"axes": {"n": {"key": "optim.lrr", "values": [0.1]}}, "plot": {}, "fits": {}},
     "unknown config key 'optim.lrr'"),
    ({"plot": {"x": "size", "y": "error"}}, "plot.x='size' is not one of samples"),
    ({"fits": {"x": "samples", "y": "top1"}}, "fits.y='top1' is not one of val/top1, error"),
    ({"metrics": [{"key": "val/top1", "reduce": "median"}]}, "metrics[0].reduce must be one of last, max, min"),
    ({"recipe": "missing.yaml"}, "stages[0].recipe"),
    ({"seeds": [0, 0]}, "seeds must be a non-empty list of different integers"),
    ({"axes": {"samples": {"key": "data.max_train_samples", "values": [16, "16"]}}, "plot": {}, "fits": {}},
     "give one folder name (samples-16_seed0)"),
    ({"axes": {"samples": {"key": "model.norm", "values": ["GN", "BN"]}}},
     "plot.x='samples' needs numeric labels"),
    ({"name": "my study"}, "name 'my study' names the study's folder"),
    ({"metrics": [{"key": "val/top1", "scale": "ten"}]}, "metrics[0].scale must be a number"),
])
def test_malformed_study_files_name_the_key(tmp_path, change, message):
    with pytest.raises(StudyError) as info:
        load_study(_study(tmp_path, **change))
    assert message in str(info.value) and "study.yaml" in str(info.value)


def test_stages_refer_to_earlier_stages_only(tmp_path):
    _write(tmp_path / "tiny.yaml", TINY_RECIPE)
    stages = [{"name": "first", "recipe": "tiny.yaml", "overrides": ["pretrained={second}"]},
              {"name": "second", "recipe": "tiny.yaml"}]
    path = _write(tmp_path / "study.yaml", {"stages": stages, "metrics": ["val/top1"]})
    with pytest.raises(StudyError, match=r"refers to \{second\}, which is not an earlier stage"):
        load_study(path)
    stages.reverse()
    study = load_study(_write(tmp_path / "study.yaml", {"stages": stages, "metrics": ["val/top1"]}))
    folders = stage_folders(tmp_path / "out", study.members[0])
    assert folders["first"] == tmp_path / "out" / "members" / "seed0" / "first"


def test_references_leave_interpolations_alone_and_shared_stages_stay_shared(tmp_path):
    from vislab.studies.spec import resolve_stage_references

    assert resolve_stage_references("model.name=${name}", {}) == "model.name=${name}"
    assert resolve_stage_references("pretrained={pre}/x", {"pre": "runs/a"}) == "pretrained=runs/a/x"
    _write(tmp_path / "tiny.yaml", TINY_RECIPE)
    stages = [{"name": "own", "recipe": "tiny.yaml"},
              {"name": "pre", "recipe": "tiny.yaml", "shared": True, "overrides": ["pretrained={own}"]},
              {"name": "fine", "recipe": "tiny.yaml"}]
    with pytest.raises(StudyError, match=r"stages\[1\] is shared but refers to \{own\}"):
        load_study(_write(tmp_path / "study.yaml", {"stages": stages, "metrics": ["val/top1"]}))


def test_a_stage_with_checkpoints_is_resumed(tmp_path):
    run_dir = tmp_path / "run"
    command = stage_command(["optim.lr=0.1"], Path("r.yaml"), run_dir, launcher=Launcher())
    assert "resume=true" not in command and f"output_dir={run_dir}" in command
    (run_dir / "checkpoints").mkdir(parents=True)  # a run killed during its first save: nothing to resume
    assert "resume=true" not in stage_command([], Path("r.yaml"), run_dir, launcher=Launcher())
    (run_dir / "checkpoints" / "epoch_0001").mkdir()
    (run_dir / "checkpoints" / "epoch_0001" / "state.pt").write_bytes(b"")
    assert "resume=true" in stage_command([], Path("r.yaml"), run_dir, launcher=Launcher())
    torchrun = stage_command([], Path("r.yaml"), run_dir, launcher=Launcher(nproc_per_node=2))
    assert "torch.distributed.run" in torchrun and "--nproc-per-node=2" in torchrun
    slurm = stage_command([], Path("r.yaml"), run_dir, launcher=Launcher(launch=("--executor", "slurm", "--gpus-per-node", "8")))
    assert slurm[slurm.index("launch"):] == ["launch", "--executor", "slurm", "--gpus-per-node", "8", "--wait", "--",
                                             "train", "r.yaml", f"output_dir={run_dir}", "resume=true"]
    with pytest.raises(ValueError, match="leave out --nproc-per-node"):
        Launcher(nproc_per_node=2, launch=("--executor", "local"))


@pytest.mark.slow
def test_study_runs_reports_skips_and_resumes(tmp_path, capsys):
    path = _study(tmp_path)
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "samples-16_seed0 [new]" in printed and "data.max_train_samples=48" in printed
    assert main(["study", str(path), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "study.csv").open()))
    assert [r["samples"] for r in rows] == ["16", "48"]
    for row in rows:
        assert math.isclose(float(row["error"]), 100 - 100 * float(row["val/top1"]), abs_tol=1e-9)
    assert (out / "study.png").stat().st_size > 0
    report = (out / "study.md").read_text()
    assert "| samples | val/top1 | error | seeds |" in report
    # two points: the log-linear fit is made (nothing held out), the power law is named as not fitted
    assert json.loads((out / "fits.json").read_text())["error"][0]["kind"] == "log_linear"
    assert "error: power_law not fitted: power_law needs at least 3 points" in report
    # finished members are skipped; one that lost its summary resumes from its checkpoint
    first = out / "members" / "samples-16_seed0"
    second = out / "members" / "samples-48_seed0"
    (second / "summary.json").unlink()
    stamp = (first / "summary.json").stat().st_mtime_ns
    assert main(["study", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "samples-16_seed0: skipped" in printed and "samples-48_seed0: done" in printed
    assert (first / "summary.json").stat().st_mtime_ns == stamp
    commands = [line for line in (second / "log.txt").read_text().splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "resume=true" not in commands[0] and "resume=true" in commands[1]
    assert json.loads((second / "summary.json").read_text())["steps"] == 3
    # a study file changed under finished members: they are not read as the new settings' results
    _write(path, {**yaml.safe_load(path.read_text()), "overrides": ["train.epochs=2"]})
    assert main(["study", str(path), "--out", str(out)]) == 1
    assert "holds a run with other settings than the study now gives" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failing_member_is_reported_and_the_others_run_in_parallel(tmp_path, capsys):
    path = _study(tmp_path, axes={"root": {"values": [
        {"label": "good", "set": {"data.max_train_samples": 16}},
        {"label": "bad", "set": {"data.name": "image_folder", "data.root": str(tmp_path / "missing")}}]}},
        plot={}, fits={})
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--jobs", "2"]) == 1
    printed = capsys.readouterr().out
    assert "root-good_seed0: done" in printed and "root-bad_seed0: failed" in printed
    assert "missing" in printed  # the end of the failed run's log
    assert "1 of 2 members finished" in (out / "study.md").read_text()
    assert "root-bad_seed0: see" in (out / "study.md").read_text()


def test_log_linear_fit_recovers_known_parameters():
    n = np.array([30, 100, 300, 1000, 3000])
    y = 40.0 + 12.5 * np.log10(n)
    fit = fit_curve("log_linear", n.tolist(), y.tolist())
    assert math.isclose(fit.params["a"], 40.0, abs_tol=1e-9) and math.isclose(fit.params["b"], 12.5, abs_tol=1e-9)
    assert math.isclose(fit.r2, 1.0) and abs(fit.held_out_error) < 1e-9 and fit.held_out_x == 3000


def test_power_law_fit_recovers_known_parameters_and_extrapolates():
    n = np.array([20, 50, 100, 200, 500, 1000, 2000])
    y = 95.0 - 80.0 * n ** -0.6
    fit = fit_curve("power_law", n.tolist(), y.tolist())
    assert fit.params == pytest.approx({"a": 80.0, "b": 0.6, "c": 95.0}, rel=1e-3)
    assert fit.r2 > 0.9999 and abs(fit.held_out_error) < 1e-3
    # a log-linear fit of the same saturating curve extrapolates worse
    assert abs(fit_curve("log_linear", n.tolist(), y.tolist()).held_out_error) > 0.5


def test_power_law_fits_a_falling_error_curve():
    n = np.array([20, 50, 100, 200, 500, 1000, 2000])
    fit = fit_curve("power_law", n.tolist(), (5.0 + 80.0 * n ** -0.6).tolist())
    assert fit.params == pytest.approx({"a": -80.0, "b": 0.6, "c": 5.0}, rel=1e-3) and fit.r2 > 0.9999


def test_fits_need_enough_positive_points():
    with pytest.raises(ValueError, match="at least 3 points"):
        fit_curve("power_law", [10, 100], [1.0, 2.0])
    with pytest.raises(ValueError, match="N > 0"):
        fit_curve("log_linear", [0, 10, 100], [1.0, 2.0, 3.0])


def test_a_shared_stage_has_one_folder_for_members_that_agree_on_it(tmp_path):
    _write(tmp_path / "tiny.yaml", TINY_RECIPE)
    stages = [{"name": "pre", "recipe": "tiny.yaml", "shared": True},
              {"name": "fine", "recipe": "tiny.yaml", "overrides": ["pretrained={pre}"]}]
    axes = {"lr": {"key": "optim.lr", "values": [0.1, 0.2]},
            "pre_lr": {"key": "optim.lr", "stage": "pre", "values": [0.01, 0.02]}}
    study = load_study(_write(tmp_path / "study.yaml", {"stages": stages, "axes": axes, "metrics": ["val/top1"]}))
    folders = [stage_folders(tmp_path, m) for m in study.members]
    assert len({f["pre"] for f in folders}) == 2 and len({f["fine"] for f in folders}) == 4
    assert folders[0]["pre"] == folders[2]["pre"] and folders[0]["pre"].parent == tmp_path / "shared"


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs" / "studies").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_studies_load(path):
    study = load_study(path)
    assert study.members and study.metrics


@pytest.mark.slow
def test_a_failed_shared_stage_runs_once_and_members_go_through_the_launcher(tmp_path, capsys):
    """Two members share a pre-training stage that fails: it runs once, and the second member is
    reported with its message. A one-stage study runs its member through ``vislab launch`` (the
    local executor) to the same summary as a plain run."""
    _write(tmp_path / "tiny.yaml", TINY_RECIPE)
    stages = [{"name": "pre", "recipe": "tiny.yaml", "shared": True,
               "overrides": ["data.name=image_folder", f"data.root={tmp_path / 'missing'}"]},
              {"name": "fine", "recipe": "tiny.yaml", "overrides": ["pretrained={pre}"]}]
    path = _write(tmp_path / "shared.yaml", {"name": "shared", "stages": stages, "metrics": ["val/top1"],
                                             "axes": {"lr": {"key": "optim.lr", "values": [0.1, 0.2]}}})
    assert main(["study", str(path), "--out", str(tmp_path / "shared")]) == 1
    printed = capsys.readouterr().out
    assert printed.count(": failed") == 2 and "is shared and failed for another member" in printed
    log = next((tmp_path / "shared" / "shared").glob("pre-*/log.txt")).read_text()
    assert sum(line.startswith("$ ") for line in log.splitlines()) == 1

    path = _study(tmp_path, axes={"samples": {"key": "data.max_train_samples", "values": [16]}}, plot={}, fits={})
    out = tmp_path / "launched"
    assert main(["study", str(path), "--out", str(out), "--launch", "--executor local"]) == 0
    member = out / "members" / "samples-16_seed0"
    assert "vislab launch --executor local --wait -- train" in (member / "log.txt").read_text().replace(
        f"{sys.executable} -m ", "")
    assert (member / "submitit").is_dir() and json.loads((member / "summary.json").read_text())["steps"] == 1
