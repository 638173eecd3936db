"""``python -m adapt.train`` on phantoms: results, grids, resume, errors and two gloo processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Events

from adapt import train as adapt_train
from adapt import trainer as adapt_trainer
from adapt.train import main
from models.model_file import load_classifier
from plumbing import engine
from plumbing.cli import run_cli
from plumbing.training import TrainingDiverged, latest_checkpoint, load_checkpoint
from tests.launch import torchrun
from tests.test_synthetic_store import write_store

PHANTOMS = ["--source", "phantom", "--target", "phantom-nih", "--version", "3", "--setting", "0s",
            "--backbone", "resnet18", "--init", "scratch", "--image-size", "32", "--batch-size", "8", "--lr", "0.003",
            "--source-length", "64", "--target-length", "64", "--eval-length", "32", "--device", "cpu",
            "--no-progress"]


def _train(runs: Path, *args: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*args, "--runs-dir", str(runs)])
    assert exit_info.value.code == 0


def _results(run: Path) -> dict[str, Any]:
    return json.loads((run / "results.json").read_text())


def _error(runs: Path, capsys: pytest.CaptureFixture[str], *args: str, command: Any = main) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(command, [*args, "--runs-dir", str(runs)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.slow
def test_short_run_on_phantoms_beats_chance_and_fills_the_run_folder(tmp_path: Path) -> None:
    _train(tmp_path, *PHANTOMS, "--target", "phantom", "--alignment", "ours", "--steps", "120", "--eval-every", "40",
           "--batch-size", "16", "--source-length", "600", "--target-length", "400", "--eval-length", "200",
           "--name", "a")
    run = tmp_path / "a-ours-seed0"
    results = _results(run)
    assert results["balanced_accuracy"] > 0.35  # chance is 0.25 (four classes); measured 0.46-0.48
    assert [h["step"] for h in results["history"]] == [40, 80, 120]
    assert set(results["figures"]) == {"final", "source_validation", "information_maximisation", "snd", "dev", "bnm",
                                       "target_entropy", "oracle"}
    assert all(isinstance(results["history"][-1][k], float) for k in ("snd", "dev_risk", "bnm", "prediction_entropy"))
    config = json.loads((run / "config.json").read_text())
    assert config["adapt"]["alignment"] == "ours" and config["evaluation_data"]["name"] == "phantom"
    model, info = load_classifier(run / "classifier.safetensors")
    assert info.attention and info.correction and info.classes == tuple(results["classes"])


def test_grid_runs_every_cell_and_skips_finished_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = [*PHANTOMS, "--alignment", "none,dcan", "--seeds", "0,1", "--steps", "2", "--name", "g"]
    _train(tmp_path, *grid)
    cells = sorted(p.name for p in tmp_path.iterdir())
    assert cells == ["g-dcan-seed0", "g-dcan-seed1", "g-none-seed0", "g-none-seed1"]
    before = {c: (tmp_path / c / "results.json").stat().st_mtime_ns for c in cells}
    capsys.readouterr()
    _train(tmp_path, *grid)
    assert capsys.readouterr().err.count("finished; skipped") == 4
    assert before == {c: (tmp_path / c / "results.json").stat().st_mtime_ns for c in cells}
    none = _results(tmp_path / "g-none-seed0")
    assert none["alignment"] == "none" and "feature_mmd" not in none["history"][0]


def test_a_diverged_cell_does_not_stop_the_grid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_train = adapt_train.train_adaptation

    def train_diverging_for_none(cfg: Any, *args: Any) -> Any:
        if cfg.label == "none":
            raise TrainingDiverged("loss total became nan at iteration 1; training stopped, no checkpoint")
        return real_train(cfg, *args)

    monkeypatch.setattr(adapt_train, "train_adaptation", train_diverging_for_none)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*PHANTOMS, "--alignment", "none,dcan", "--steps", "2", "--name", "d", "--runs-dir",
                       str(tmp_path)])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "1 of 2 cell(s) diverged (d-none-seed0)" in last
    assert "starts again those without a checkpoint" in last and "last good checkpoint" not in last  # none written
    assert (tmp_path / "d-dcan-seed0" / "results.json").is_file()  # the cell after it still ran
    assert not (tmp_path / "d-none-seed0").exists()  # nothing half-written


def test_interrupted_cell_resumes_exactly_when_the_command_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [*PHANTOMS, "--alignment", "dcan", "--prior-correction", "bbse", "--steps", "6", "--eval-every", "2"]
    monkeypatch.setattr(adapt_trainer, "RELIABLE_CONDITIONING", 0.0)  # trust every estimate: a prior to resume with
    _train(tmp_path / "full", *args)
    attach = engine.attach_training_handlers

    def attach_then_interrupt(engine: Any, **kwargs: Any) -> None:
        attach(engine, **kwargs)
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=4), lambda _: (_ for _ in ()).throw(KeyboardInterrupt))

    with monkeypatch.context() as patch:
        patch.setattr(engine, "attach_training_handlers", attach_then_interrupt)
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, [*args, "--runs-dir", str(tmp_path / "split")])
        assert exit_info.value.code == 130  # interrupted
    name = "adapt-phantom-phantom-nih-dcan+bbse-seed0"  # steps 5 and 6 weigh by the prior estimated at step 4
    assert latest_checkpoint(tmp_path / "split" / name).name == "checkpoint_4.pt"
    _train(tmp_path / "split", *args)
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / d / name)) for d in ("full", "split"))
    assert a["run"]["iteration"] == b["run"]["iteration"] == 6
    torch.testing.assert_close(b["model"], a["model"], rtol=0, atol=0)
    ra, rb = _results(tmp_path / "full" / name), _results(tmp_path / "split" / name)
    assert ra["history"] == rb["history"]
    assert b["run"]["prior"] == a["run"]["prior"] and len(a["run"]["prior"]) == 4
    config = json.loads((tmp_path / "split" / name / "config.json").read_text())
    assert len(config["resumed_with"]) == 1


def test_a_cell_started_with_other_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _train(tmp_path, *PHANTOMS, "--alignment", "none", "--steps", "2", "--eval-every", "1", "--name", "c")
    (tmp_path / "c-none-seed0" / "results.json").unlink()  # as if interrupted after its checkpoints
    err = _error(tmp_path, capsys, *PHANTOMS, "--alignment", "none", "--steps", "3", "--eval-every", "1", "--name", "c")
    assert "started with other settings (steps)" in err


def test_missing_data_root_and_class_mismatch_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CXR_CHEXPERT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store.zarr"
    write_store(store)  # v1-0s
    err = _error(tmp_path / "runs", capsys, "--source", "synthetic", "--source-store", str(store), "--target",
                 "chexpert", "--version", "1", "--setting", "0s", "--device", "cpu")
    assert "chexpert: no data root given; pass --target-root or set CXR_CHEXPERT_ROOT" in err
    err = _error(tmp_path / "runs", capsys, "--source", "synthetic", "--target", "chexpert", "--device", "cpu")
    assert "no synthetic store at ./synthetic-v3-0s.zarr" in err and "python -m synth.generate" in err
    err = _error(tmp_path / "runs", capsys, "--source", "synthetic", "--source-store", str(store), "--target",
                 "phantom-nih", "--version", "3", "--setting", "0s", "--device", "cpu")
    assert "holds task v1-0s" in err and "cannot serve task v3-0s" in err
    err = _error(tmp_path / "runs", capsys, "--source", "phantom", "--target", "isic2019", "--device", "cpu")
    assert "isic2019" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_gloo_processes_train_a_grid_cell(tmp_path: Path) -> None:
    args = [*PHANTOMS, "--alignment", "ours", "--prior-correction", "em", "--steps", "3", "--eval-every", "1",
            "--runs-dir", str(tmp_path)]
    torchrun("adapt.train", args)
    results = _results(tmp_path / "adapt-phantom-phantom-nih-ours+em-seed0")
    assert results["history"][0]["n"] == 32  # every evaluation image counted once over both ranks
    assert (tmp_path / "adapt-phantom-phantom-nih-ours+em-seed0" / "classifier.safetensors").is_file()


def _fake_run(runs: Path, name: str, alignment: str, seed: int, accuracy: float, collapsed: str | None) -> None:
    figure = {"step": 10, "balanced_accuracy": accuracy, "source_validation_balanced_accuracy": 0.9,
              "information_maximisation": 0.1, "collapsed": collapsed}
    results = {"trained_by": "python -m adapt.train", "source": "synthetic", "target": "chexpert",
               "alignment": alignment, "seed": seed, "task": "v1-0s", "backbone": "resnet50", "image_size": 224,
               "steps": 10, "init": {"init": "imagenet"}, "target_prior": {"asked": "natural"},
               "figures": {k: figure for k in ("final", "source_validation", "information_maximisation", "oracle")}}
    (runs / name).mkdir(parents=True)
    (runs / name / "results.json").write_text(json.dumps(results))


def test_report_averages_seeds_flags_collapse_and_sorts_best_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adapt.report import main as report

    for seed, (none, dcan) in enumerate([(0.6, 0.5), (0.7, 0.5)]):
        _fake_run(tmp_path, f"none{seed}", "none", seed, none, None)
        _fake_run(tmp_path, f"dcan{seed}", "dcan", seed, dcan, "No Finding" if seed else None)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps({"trained_by": "python -m evaluate.finetune"}))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(report, ["--runs-dir", str(tmp_path), "--format", "json"])
    assert exit_info.value.code == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["alignment"] for r in rows] == ["none", "dcan"]
    assert rows[0]["balanced_accuracy"] == pytest.approx(0.65) and rows[0]["std"] == pytest.approx(0.0707, abs=1e-4)
    assert rows[1]["collapsed"] == 1 and rows[1]["seeds"] == [0, 1]
    with pytest.raises(SystemExit):
        run_cli(report, ["--runs-dir", str(tmp_path)])
    row = ("| chexpert | synthetic | v1-0s | resnet50 | 224 | 10 | imagenet | natural | dcan | 0.5000 +- 0.0000 | 0, 1 "
           "| yes (1/2) |")
    assert row in capsys.readouterr().out
    assert _error(tmp_path / "empty", capsys, command=report).startswith("python -m adapt.report: error: no finished")


@pytest.mark.slow
def test_a_start_per_seed_through_seed_in_init_and_one_report_row_over_the_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from adapt.report import main as report

    quick = [a for a in PHANTOMS if a not in ("--init", "scratch")]
    _train(tmp_path / "start", *quick, "--init", "scratch", "--alignment", "none", "--seeds", "0,1", "--steps", "2",
           "--name", "start")
    pattern = str(tmp_path / "start" / "start-none-seed{seed}" / "classifier.safetensors")
    before = sorted(p.name for p in tmp_path.iterdir())
    missing = tmp_path / "start" / "start-none-seed2" / "classifier.safetensors"
    assert _error(tmp_path, capsys, *quick, "--init", pattern, "--seeds", "0,2", "--steps", "2") == (
        f"python -m adapt.train: error: --init {missing}: no such model file; give scratch, imagenet, ssl:RUN or a "
        "model file")  # every seed's start is checked before any cell
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    _train(tmp_path, *quick, "--init", pattern, "--alignment", "none", "--seeds", "0,1", "--steps", "2",
           "--name", "from")
    for seed in (0, 1):
        init = _results(tmp_path / f"from-none-seed{seed}")["init"]
        start = tmp_path / "start" / f"start-none-seed{seed}" / "classifier.safetensors"
        assert init["init"] == pattern and init["file"] == str(start)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_cli(report, ["--runs-dir", str(tmp_path), "--format", "json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["init"], r["seeds"]) for r in rows] == [(pattern, [0, 1])]


def test_weights_given_against_a_preset_name_the_cell_and_a_source_only_regulariser_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*PHANTOMS, "--alignment", "dcan", "--feature-mmd", "0", "--output-mmd", "0", "--entropy", "0",
            "--steps", "2", "--name", "w"]
    _train(tmp_path, *args)
    run = tmp_path / "w-dcan+feature_mmd0+output_mmd0+entropy0-seed0"
    history = _results(run)["history"]
    assert len(history) == 1
    state = load_checkpoint(latest_checkpoint(run))
    assert state["run"]["iteration"] == 2
    err = _error(tmp_path, capsys, *PHANTOMS, "--alignment", "dcan", "--feature-mmd", "0", "--output-mmd", "0",
                 "--entropy", "0", "--steps", "3", "--name", "w")
    assert "started with other settings (steps)" in err  # a finished cell is compared too


def test_bad_input_is_one_line_before_anything_is_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    for bad, says in (
        (["--alpha", "inf"], "--diversity and --alpha must be finite and >= 0"),
        (["--alpha", "nan"], "--diversity and --alpha must be finite and >= 0"),
        (["--entropy", "-1"], "loss weights (--feature-mmd, --output-mmd, --regulariser, --entropy) must be finite"),
        (["--feature-mmd", "inf"], "loss weights"),
        (["--seeds", "0,,1"], "--seeds '0,,1' has an empty item"),
        (["--seeds", "-1"], "--seeds '-1' must hold non-negative integers"),
        (["--alignment", "none,,dcan"], "--alignment 'none,,dcan' has an empty item"),
        (["--name", ""], "--name '' must be one plain folder name"),
        (["--name", "../x"], "--name '../x' must be one plain folder name"),
        (["--target-length", "1"], "--target phantom-nih gives 1 target training images, fewer than one batch"),
        (["--source-length", "4"], "--source phantom gives"),
    ):
        assert says in _error(runs, capsys, *PHANTOMS, "--steps", "1", *bad), bad
    assert not runs.exists()
    file = tmp_path / "file"
    file.write_text("x")
    err = _error(file / "runs", capsys, *PHANTOMS, "--steps", "1")
    assert err.endswith(f"--runs-dir {file}/runs cannot be written: {file} is a file, not a folder")


def test_ctrl_c_inside_a_checkpoint_write_is_an_interruption_and_a_missing_class_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_plumbing_cli import save_interrupted

    args = [*PHANTOMS, "--alignment", "none", "--steps", "2", "--name", "i", "--runs-dir", str(tmp_path)]
    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", save_interrupted)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, args)
        assert exit_info.value.code == 130
        err = capsys.readouterr().err
        assert err.endswith("\ninterrupted\n") and "Traceback" not in err
    _train(tmp_path, *args[:-2])  # the same command again
    results = _results(tmp_path / "i-none-seed0")
    assert results["images"]["target_evaluation"] == 32
    missing = ["Pneumothorax", "Pneumonia", "Cardiomegaly"]  # the first 32 phantom-nih images show No Finding only
    assert results["classes_missing_from_evaluation"] == results["history"][-1]["classes_missing_from_evaluation"]
    assert results["classes_missing_from_evaluation"] == missing
    err = capsys.readouterr().err
    assert f"warning: the target evaluation set has no image of {', '.join(missing)}" in err
    assert f"over the 1 class present (no evaluation image of {', '.join(missing)}) (final step)" in err
    damaged = tmp_path / "i-none-seed0" / "results.json"
    damaged.write_text(damaged.read_text()[:100])  # a finished cell's results, truncated: named, not skipped
    assert f"{damaged} is damaged" in _error(tmp_path, capsys, *args[:-2])


def test_report_names_a_damaged_results_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adapt.report import main as report

    _fake_run(tmp_path, "dcan0", "dcan", 0, 0.5, None)
    _fake_run(tmp_path, "dcan1", "dcan", 1, 0.6, None)
    damaged = tmp_path / "dcan1" / "results.json"
    for text, says in ((damaged.read_text()[:40], "cannot be read as a JSON object"),
                       ("[]", "cannot be read as a JSON object"), ("{}", "lacks figures a finished run records")):
        damaged.write_text(text)
        (damaged.parent / "config.json").write_text(json.dumps({"adapt": {}}))
        err = _error(tmp_path, capsys, command=report)
        assert err == f"python -m adapt.report: error: {damaged} is damaged: it {says}; remove it (or its run " \
                      "folder) and run the run again"
