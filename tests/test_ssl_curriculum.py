"""``python -m ssl.curriculum``: every task steps, curricula chain and share steps, resume, the table, errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Events
from safetensors import safe_open
from safetensors.torch import load_file

from adapt.train import main as adapt_main
from datasets.batches import training_batches
from datasets.synthetic import SyntheticDataset
from models.model_file import BACKBONE_FILE, CLASSIFIER_FILE, read_model_info
from plumbing import engine
from plumbing.cli import run_cli
from plumbing.files import sha256_file
from plumbing.runtime import Runtime
from plumbing.training import TrainingDiverged
from ssl import step_store
from ssl.config import StepConfig
from ssl.curriculum import main
from ssl.data import parse_data, unlabelled_images
from ssl.monitor import Monitor, MonitorConfig, balanced_halves
from ssl.step_store import STEPS_DIR
from ssl.table import curriculum_label, plan, render, table
from ssl.tasks import task_names
from ssl.trainer import CRITERION, MONITOR_CRITERION, PretextData, PretextTrainer, build_task, choose_step_lr, fit_step
from tests.launch import torchrun
from tests.test_synthetic_store import write_store

SMALL = {  # settings that keep every task fast on 32 px and 64 images
    "relloc": {"hidden_dim": 64},
    "rotation": {},
    "moco": {"queue_length": 32},
    "swav": {"prototypes": 16, "small_crops": 2, "queue_length": 0},
    "odc": {"clusters": 4, "images_per_cluster": 4},
}
COMMON = ["--data", "phantom", "--max-images", "64", "--downstream", "phantom", "--version", "3", "--setting", "0s",
          "--length", "96", "--eval-length", "48", "--backbone", "tiny", "--image-size", "32", "--epochs", "1",
          "--batch-size", "16", "--lr", "0.05", "--downstream-lr-grid", "0.001", "--monitor-images", "32",
          "--device", "cpu", "--no-progress"]


def _run(runs: Path, *args: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["run", *args, "--runs-dir", str(runs)])
    assert exit_info.value.code == 0


def _error(runs: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*args, "--runs-dir", str(runs)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _step(task: str, epochs: int = 1, lr: float = 0.05, start: str = "scratch") -> StepConfig:
    return StepConfig(task=task, settings=SMALL[task], data=("phantom",), max_images=64, backbone="tiny",
                      image_size=32, epochs=epochs, batch_size=16, lr=lr, lr_grid=(lr,), lr_trial_epochs=1,
                      weight_decay=1e-4, momentum=0.9, seed=0, start=start, bf16=False, processes=1,
                      store_workers=None)


def _data() -> PretextData:
    images, channels = unlabelled_images(parse_data("phantom"), 32, 64, 0)
    return PretextData(images, channels)


CPU = Runtime(torch.device("cpu"), False, 0, False, Path("runs"))


def _steps(runs: Path) -> list[str]:
    return sorted(p.name for p in (runs / STEPS_DIR).iterdir())


@pytest.mark.parametrize("task", task_names())
def test_every_registered_task_runs_one_step(task: str) -> None:
    data = _data()
    trainer = PretextTrainer(build_task(_step(task), data, 4), _step(task), 0.05, 4, CPU.device, False)
    if task == "odc":
        trainer.task.initialise((b["image"], torch.as_tensor(b["index"])) for b in
                                torch.utils.data.DataLoader(data.images, batch_size=16))
    batch = next(iter(torch.utils.data.DataLoader(data.images, batch_size=16)))
    before = [p.detach().clone() for p in trainer.backbone.parameters()]
    out = trainer.step(batch)
    assert math.isfinite(out["loss"]) and out["lr"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.backbone.parameters(), strict=True))


def test_a_short_rotation_step_on_phantoms_lowers_its_loss() -> None:
    losses = fit_step(_step("rotation", epochs=6, lr=0.1), _data(), CPU, 0.1, 6).state.epoch_losses
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0]


def test_a_curriculum_chains_its_steps_exports_backbones_and_records_the_run(tmp_path: Path) -> None:
    _run(tmp_path, *COMMON, "--tasks", "rotation,moco", "--no-singles", "--downstream-image-size", "48")
    run = tmp_path / "ssl-phantom-v3-0s-rotation-moco-seed0"
    results = json.loads((run / "results.json").read_text())
    first, second = results["steps"]
    assert [first["task"], second["task"]] == ["rotation", "moco"]
    step_config = json.loads((tmp_path / STEPS_DIR / second["key"] / "config.json").read_text())["step"]
    assert step_config["start"] == f"step:{first['key']}"  # the second step starts from the first one's backbone
    for key in (first["key"], second["key"]):
        with safe_open(tmp_path / STEPS_DIR / key / BACKBONE_FILE, "pt") as f:
            assert all(k.startswith("backbone.") for k in f.keys())  # heads are dropped
        assert not list((tmp_path / STEPS_DIR / key).glob("checkpoint_*.pt"))
    assert (run / BACKBONE_FILE).read_bytes() == (tmp_path / STEPS_DIR / second["key"] / BACKBONE_FILE).read_bytes()
    info = read_model_info(run / BACKBONE_FILE)
    assert info.training["step"]["task"] == "moco"
    down = results["downstream"]
    assert 0 <= down["balanced_accuracy"] <= 1 and set(down["recall"]) == set(down["classes"])
    assert down["ail"] is not None and (run / "downstream" / "attention.png").is_file()
    assert read_model_info(run / "downstream" / CLASSIFIER_FILE).image_size == 48  # steps at 32 px, downstream at 48
    assert down["lr"]["lr"] == 0.001 and results["ordering"] == "rotation>moco"
    # the probes of every step's backbone, the run's equal to its last step's; the monitor's values per epoch
    assert down["knn"] == second["probes"]["knn"] and down["linear"] == second["probes"]["linear"]
    assert 0 <= first["probes"]["knn"]["balanced_accuracy"] <= 1 and first["probes"]["linear"]["lr"] in (0.1, 0.01,
                                                                                                         0.001)
    for step in (first, second):
        assert 0 <= step["knn_start"] <= 1 and len(step["epoch_knn"]) == 1
        stored = json.loads((tmp_path / STEPS_DIR / step["key"] / "step.json").read_text())
        assert (stored["knn_start"], stored["epoch_knn"]) == (step["knn_start"], step["epoch_knn"])


def test_the_monitor_scores_every_epoch_and_chooses_the_rate(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = dataclasses.replace(_step("rotation", epochs=2), lr=None, lr_grid=(0.05, 1e-6), monitor={})
    monitor = Monitor(MonitorConfig("phantom", None, 3, "0s", 32), 32)
    data = dataclasses.replace(_data(), monitor=monitor)
    choice = choose_step_lr(cfg, data, CPU)
    assert choice.criterion == MONITOR_CRITERION and choice.maximise
    assert choice.lr == max(choice.trials, key=lambda t: t.score).lr and len(choice.trials) == 2
    state = fit_step(cfg, data, CPU, 0.05, 2).state
    assert state.knn_start is not None and len(state.epoch_knn) == 2
    assert state.monitored() == {"knn_start": state.knn_start, "epoch_knn": state.epoch_knn}
    assert state.knn_start == monitor.knn(build_task(cfg, _data(), 8).backbone, CPU, 16)  # the seeded start's
    trainer = PretextTrainer(build_task(cfg, data, 4), cfg, 0.05, 4, CPU.device, False)
    trainer.state.knn_start = 0.5
    assert trainer.step(next(iter(torch.utils.data.DataLoader(data.images, batch_size=16))))["monitor_knn"] == 0.5
    assert fit_step(cfg, _data(), CPU, 0.05, 1).state.monitored() == {}  # no monitor, nothing recorded


def test_the_monitor_draws_disjoint_class_balanced_bank_and_queries() -> None:
    labels = torch.tensor([0] * 50 + [1] * 7 + [2] * 1)
    bank, queries = balanced_halves(labels, 3, 30, seed=0)
    assert not set(bank) & set(queries) and bank == sorted(bank) and queries == sorted(queries)
    counts = [torch.bincount(labels[rows], minlength=3).tolist() for rows in (bank, queries)]
    assert counts == [[10, 4, 1], [10, 3, 0]]  # up to 30 // 3 a class, at most half of a class for the queries
    assert (bank, queries) == balanced_halves(labels, 3, 30, seed=0)


def test_a_synthetic_store_as_the_downstream_task_with_held_out_phantoms(tmp_path: Path) -> None:
    """The store's train split trains (and is the probes' bank, and the monitor's), its val split validates, the
    phantoms of --downstream-eval are scored."""
    store = tmp_path / "store.zarr"
    write_store(store)  # v1-0s
    at = COMMON.index("--downstream")
    args = [*COMMON[:at], *COMMON[at + 8:], "--downstream", "synthetic", "--downstream-root", str(store), "--version",
            "1", "--setting", "0s", "--downstream-eval", "phantom"]
    _run(tmp_path / "runs", *args, "--tasks", "rotation")
    results = json.loads((tmp_path / "runs" / "ssl-synthetic-v1-0s-rotation-seed0" / "results.json").read_text())
    down = results["downstream"]
    assert down["classes"] == ["No Finding", "Pneumothorax"]
    assert 0 <= down["balanced_accuracy"] <= 1
    for probe in (down["knn"], down["linear"]):
        assert 0 <= probe["balanced_accuracy"] <= 1 and probe["n"] == 48  # the held-out phantoms
    assert len(results["steps"][0]["epoch_knn"]) == 1


def test_a_monitor_is_part_of_a_steps_key_and_its_absence_keeps_the_older_key() -> None:
    plain = _step("rotation")
    assert "monitor" not in plain.to_dict()  # recorded as before the monitor existed: the same key
    watched = dataclasses.replace(plain, monitor=MonitorConfig("phantom", None, 3, "0s").to_dict())
    assert watched.to_dict()["monitor"]["images"] == 500 and watched.key() != plain.key()


def test_without_a_monitor_the_lowest_loss_chooses_the_rate(tmp_path: Path) -> None:
    at = COMMON.index("--lr")
    _run(tmp_path, *COMMON[:at], *COMMON[at + 2:], "--tasks", "rotation", "--lr-grid", "0.05,0.01", "--monitor",
         "none")
    (key,) = _steps(tmp_path)
    step = json.loads((tmp_path / STEPS_DIR / key / "step.json").read_text())
    assert step["lr"]["criterion"] == CRITERION and step["lr"]["best"] == "lowest" and len(step["lr"]["trials"]) == 2
    assert "knn_start" not in step and "epoch_knn" not in step


def test_a_shared_prefix_is_reused_and_a_changed_setting_is_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(tmp_path, *COMMON, "--tasks", "rotation", "--no-singles")
    assert len(_steps(tmp_path)) == 1
    capsys.readouterr()
    _run(tmp_path, *COMMON, "--tasks", "rotation,relloc", "--no-singles", "--set", "relloc.hidden_dim=64")
    err = capsys.readouterr().err
    assert "rotation: reusing the finished step" in err and "rotation: training" not in err
    assert len(_steps(tmp_path)) == 2
    _run(tmp_path, *COMMON, "--tasks", "rotation", "--no-singles")  # finished: skipped
    assert "finished; skipped" in capsys.readouterr().err
    _run(tmp_path, *COMMON, "--tasks", "rotation", "--no-singles", "--lr", "0.02", "--prefix", "other")
    assert "rotation: training" in capsys.readouterr().err and len(_steps(tmp_path)) == 3
    _run(tmp_path, *COMMON, "--tasks", "rotation,relloc", "--set", "relloc.hidden_dim=64")  # singles too
    assert "ssl-phantom-v3-0s-rotation-seed0: finished; skipped" in capsys.readouterr().err  # relloc's --set is not its
    record = json.loads((tmp_path / "ssl-phantom-v3-0s-rotation-relloc-seed0" / "results.json").read_text())
    assert record["settings"]["overrides"] == {"relloc": {"hidden_dim": 64}}


def test_a_diverged_step_stops_only_the_runs_that_need_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_fit_step = step_store.fit_step

    def fit_step_diverging_for_relloc(cfg: StepConfig, *args: Any, **kwargs: Any) -> Any:
        if cfg.task == "relloc":
            raise TrainingDiverged("loss loss became nan at iteration 1; training stopped, no checkpoint")
        return real_fit_step(cfg, *args, **kwargs)

    monkeypatch.setattr(step_store, "fit_step", fit_step_diverging_for_relloc)
    args = [*COMMON, "--tasks", "relloc,rotation", "--set", "relloc.hidden_dim=64"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["run", *args, "--runs-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert _steps(tmp_path) == [p.name for p in (tmp_path / STEPS_DIR).glob("rotation-*")]  # relloc: nothing left
    assert "1 of 6 cell(s) diverged (relloc-" in last and "3 more not run as they need them" in last
    assert "ssl-phantom-v3-0s-relloc-seed0" in last and "ssl-phantom-v3-0s-relloc-rotation-seed0" in last
    assert (tmp_path / "ssl-phantom-v3-0s-rotation-seed0" / "results.json").is_file()  # the run after it ran
    assert not (tmp_path / "ssl-phantom-v3-0s-relloc-seed0").exists()
    err = _error(tmp_path, capsys, "run", *args, "--downstream-epochs", "2")  # checked before anything trains
    assert "ssl-phantom-v3-0s-rotation-seed0 was started with other settings (downstream)" in err


def _interrupted_then_resumed(runs: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], step: int,
                              iteration: int) -> None:
    """Run ``args`` into ``runs``, stopped (Ctrl-C) at ``iteration`` of pretext step ``step``, then run it again."""
    attach = engine.attach_training_handlers
    calls = []

    def attach_then_interrupt(engine: Any, **kwargs: Any) -> None:
        attach(engine, **kwargs)
        calls.append(1)
        if len(calls) == step:
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=iteration),
                                     lambda _: (_ for _ in ()).throw(KeyboardInterrupt))

    with monkeypatch.context() as patch:
        patch.setattr(engine, "attach_training_handlers", attach_then_interrupt)
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, ["run", *args, "--runs-dir", str(runs)])
        assert exit_info.value.code == 130
    _run(runs, *args)


def _same_runs(first: Path, second: Path, name: str) -> None:
    a_results, b_results = (json.loads((d / name / "results.json").read_text()) for d in (first, second))
    assert a_results["steps"] == b_results["steps"]
    a, b = (load_file(d / name / BACKBONE_FILE) for d in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resumed exactly
    assert a_results["downstream"]["balanced_accuracy"] == b_results["downstream"]["balanced_accuracy"]


def test_an_interrupted_curriculum_resumes_its_step_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [*COMMON, "--tasks", "rotation,moco", "--no-singles", "--epochs", "2"]
    _run(tmp_path / "full", *args)
    _interrupted_then_resumed(tmp_path / "split", monkeypatch, args, step=2, iteration=6)  # moco: 6 of 8
    _same_runs(tmp_path / "full", tmp_path / "split", "ssl-phantom-v3-0s-rotation-moco-seed0")


def test_a_store_goes_through_the_block_loader_with_indices_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store.zarr"
    write_store(store)  # v1-0s, 32 px: 40 training images
    images, _ = unlabelled_images(parse_data(f"synthetic={store}"), 32, 64, 0)
    assert isinstance(images, SyntheticDataset)  # whole and alone: read in blocks
    batch = next(iter(training_batches(images, 16, 0, 0, 0, torch.device("cpu"))))
    for i, image in zip(batch["index"].tolist(), batch["image"], strict=True):
        torch.testing.assert_close(image, images[i]["image"])
    args = [*COMMON, "--data", f"synthetic={store}", "--tasks", "odc", "--set", "odc.clusters=4", "--set",
            "odc.images_per_cluster=4", "--epochs", "2"]
    _run(tmp_path / "full", *args)
    _interrupted_then_resumed(tmp_path / "split", monkeypatch, args, step=1, iteration=3)  # 3 of 2 x 2
    _same_runs(tmp_path / "full", tmp_path / "split", "ssl-phantom-v3-0s-odc-seed0")


def _fake(ordering: str, tasks: list[str], seed: int, accuracy: float, init: str = "scratch",
          overrides: dict[str, Any] | None = None, run: str = "ssl", knn: float | None = None) -> dict[str, Any]:
    settings = {"backbone": "tiny", "downstream": {"data": "phantom", "init": f"runs/{ordering}", "seed": seed},
                "tasks": tasks, "init": init, "seed": seed, "overrides": overrides or {}}
    probes = {} if knn is None else {"knn": {"balanced_accuracy": knn}, "linear": {"balanced_accuracy": knn + 0.1}}
    return {"ordering": ordering, "tasks": tasks, "init": init, "seed": seed, "downstream_task": "phantom-v3-0s",
            "backbone": "tiny", "image_size": 32, "settings": settings, "run": f"{run}-{ordering}-{seed}",
            "downstream": {"balanced_accuracy": accuracy, "ail": 0.5} | probes}


def test_curriculum_labels_deltas_and_baseline_flags_on_hand_made_results() -> None:
    singles = {"a": 0.5, "b": 0.6, "c": 0.7}
    assert curriculum_label(["a", "b", "c"], singles) == "C"
    assert curriculum_label(["c", "b", "a"], singles) == "AC"
    assert curriculum_label(["a", "c", "b"], singles) == "MC"
    assert curriculum_label(["a", "d"], singles) == "?"
    assert curriculum_label(["a"], singles) == "-"
    runs = [_fake("a", ["a"], 0, 0.5), _fake("a", ["a"], 1, 0.7), _fake("b", ["b"], 0, 0.4),
            _fake("a>b", ["a", "b"], 0, 0.65), _fake("b>a", ["b", "a"], 0, 0.55), _fake("none", [], 0, 0.45),
            _fake("imagenet", [], 0, 0.62, init="imagenet")]
    (rows,) = table(runs).values()
    by = {r["ordering"]: r for r in rows}
    assert [r["ordering"] for r in rows] == ["a>b", "imagenet", "a", "b>a", "none", "b"]  # best first
    assert by["a"]["balanced_accuracy"] == pytest.approx(0.6) and by["a"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert by["a>b"]["label"] == "AC" and by["b>a"]["label"] == "C"  # single tasks: a 0.6, b 0.4
    assert by["a>b"]["delta"] == pytest.approx(0.05) and by["b>a"]["delta"] == pytest.approx(0.15)
    assert (by["a>b"]["beats_imagenet"], by["a>b"]["beats_scratch"]) == ("yes", "yes")
    assert (by["b"]["beats_imagenet"], by["b"]["beats_scratch"]) == ("no", "no")
    assert plan(runs, ["a", "b"], 2) == [("b,a", "C"), ("a,b", "AC")]
    text = render(table(runs), "markdown")
    assert "| a>b | AC | - | - | 0.6500 +- 0.0000 | +0.0500 |" in text  # finished before the probes: none
    assert render(table(runs), "csv").splitlines()[0].startswith("group,ordering,label")


def test_labels_by_the_knn_or_linear_probe() -> None:
    """By fine-tune, a (0.6) > b (0.4), so a>b is AC; by k-NN, a (0.3) < b (0.5), so a>b is C."""
    runs = [_fake("a", ["a"], 0, 0.6, knn=0.3), _fake("b", ["b"], 0, 0.4, knn=0.5),
            _fake("a>b", ["a", "b"], 0, 0.65, knn=0.45), _fake("none", [], 0, 0.5, knn=0.4)]
    by = {r["ordering"]: r for r in table(runs)[next(iter(table(runs)))]}
    assert by["a>b"]["label"] == "AC" and by["a>b"]["delta"] == pytest.approx(0.05)
    (rows,) = table(runs, "knn").values()
    assert [r["ordering"] for r in rows] == ["b", "a>b", "none", "a"]  # best k-NN first
    by_knn = {r["ordering"]: r for r in rows}
    assert by_knn["a>b"]["label"] == "C" and by_knn["a>b"]["delta"] == pytest.approx(0.15)
    assert by_knn["a"]["beats_scratch"] == "no" and by_knn["a>b"]["beats_scratch"] == "yes"
    assert by_knn["a>b"]["knn"] == pytest.approx(0.45) and by_knn["a>b"]["linear"] == pytest.approx(0.55)
    assert plan(runs, ["a", "b"], 2, label_by="knn") == [("a,b", "C"), ("b,a", "AC")]
    text = render(table(runs, "linear"), "markdown", "linear")
    assert "label, delta and baselines by linear probe" in text
    assert "| a>b | C | 0.4500 +- 0.0000 | 0.5500 +- 0.0000 | 0.6500 +- 0.0000 | +0.1500 |" in text


def test_singles_match_start_and_settings_and_copies_count_once() -> None:
    runs = [_fake("a", ["a"], 0, 0.5), _fake("b", ["b"], 0, 0.6),  # from scratch: a < b
            _fake("a (imagenet)", ["a"], 0, 0.8, init="imagenet"),
            _fake("b (imagenet)", ["b"], 0, 0.7, init="imagenet"),
            _fake("a>b (imagenet)", ["a", "b"], 0, 0.75, init="imagenet"),
            _fake("b", ["b"], 0, 0.4, overrides={"b": {"k": 2}}),
            _fake("a>b", ["a", "b"], 0, 0.55, overrides={"b": {"k": 2}}),
            _fake("a", ["a"], 0, 0.5, run="copy")]  # the same run under another prefix
    (rows,) = table(runs).values()
    by = {r["ordering"]: r for r in rows}
    assert by["a>b (imagenet)"]["label"] == "AC"  # ImageNet singles: a 0.8 > b 0.7
    assert by["a>b (imagenet)"]["delta"] == pytest.approx(-0.05)
    assert by["a>b [b.k=2]"]["label"] == "AC"  # b with k=2 alone: 0.4 < a 0.5
    assert by["b [b.k=2]"]["balanced_accuracy"] == pytest.approx(0.4) and by["b"]["balanced_accuracy"] == 0.6
    assert by["a"]["seeds"] == [0]
    assert plan(runs, ["a", "b"], 2, "imagenet") == [("b,a", "C"), ("a,b", "AC")]
    assert plan(runs, ["a", "b"], 2) == [("a,b", "C"), ("b,a", "AC")]


def test_curriculum_orderings_then_the_table_and_the_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run(tmp_path, *COMMON, "--tasks", "rotation,relloc", "--orderings", "curriculum", "--set", "relloc.hidden_dim=64")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_cli(main, ["runs", "--runs-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "| rotation |" in out and "| relloc [relloc.hidden_dim=64] |" in out  # rows show their --set values
    pairs = [line for line in out.splitlines() if "| rotation>relloc [" in line or "| relloc>rotation [" in line]
    assert len(pairs) == 1 and "| C |" in pairs[0]  # the singles ran first, then only their Curriculum ordering
    assert out.count("Downstream phantom-v3-0s") == 1  # one settings group
    with pytest.raises(SystemExit):
        run_cli(main, ["runs", "--plan", "--runs-dir", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split("\t")[1] for line in lines) == ["relloc,rotation", "rotation,relloc"]


def test_bad_options_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["run", *COMMON]
    assert "unknown pretext task 'jigsaw'" in _error(tmp_path, capsys, *base, "--tasks", "jigsaw")
    assert "moco has no setting queue" in _error(tmp_path, capsys, *base, "--tasks", "moco", "--set", "moco.queue=3")
    assert "expected a value like" in _error(tmp_path, capsys, *base, "--tasks", "moco", "--set",
                                             "moco.temperature=warm")
    assert "is not one of --tasks" in _error(tmp_path, capsys, *base, "--tasks", "rotation", "--set", "swav.epsilon=1")
    assert "unknown data set 'nope'" in _error(tmp_path, capsys, *base, "--tasks", "rotation", "--data", "nope")
    assert "temperature > 0 is required" in _error(tmp_path, capsys, *base, "--tasks", "moco", "--set",
                                                   "moco.temperature=0")
    assert "version 99" in _error(tmp_path, capsys, *base, "--tasks", "rotation", "--version", "99")
    assert "3-channel images" in _error(tmp_path, capsys, *base, "--tasks", "rotation", "--downstream", "isic2019",
                                        "--downstream-root", str(tmp_path))
    assert "chexpert" in _error(tmp_path, capsys, *base, "--tasks", "rotation", "--downstream", "chexpert",
                                "--downstream-root", str(tmp_path / "nowhere"))
    assert "--downstream-image-size must lie" in _error(tmp_path, capsys, *base, "--tasks", "rotation",
                                                        "--downstream-image-size", "8")
    assert "no finished curriculum run" in _error(tmp_path, capsys, "runs")
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_two_gloo_processes_run_a_curriculum(tmp_path: Path) -> None:
    torchrun("ssl.curriculum", ["run", *COMMON, "--tasks", "moco,swav", "--no-singles", "--set", "swav.prototypes=16",
                                "--set", "swav.small_crops=2", "--runs-dir", str(tmp_path)])
    results = json.loads((tmp_path / "ssl-phantom-v3-0s-moco-swav-seed0" / "results.json").read_text())
    assert [s["task"] for s in results["steps"]] == ["moco", "swav"]
    assert all(math.isfinite(v) for s in results["steps"] for v in s["epoch_losses"])


@pytest.mark.slow
def test_adapt_starts_from_a_curriculum_backbone(tmp_path: Path) -> None:
    args = [a if a != "tiny" else "resnet18" for a in COMMON]
    _run(tmp_path, *args, "--tasks", "rotation", "--max-images", "32")
    name = "ssl-phantom-v3-0s-rotation-seed0"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(adapt_main, ["--source", "phantom", "--target", "phantom-nih", "--version", "3", "--setting", "0s",
                             "--backbone", "resnet18", "--init", f"ssl:{name}", "--image-size", "32", "--batch-size",
                             "8", "--steps", "2", "--eval-every", "2", "--source-length", "32", "--target-length",
                             "32", "--eval-length", "16", "--device", "cpu", "--no-progress", "--runs-dir",
                             str(tmp_path), "--name", "a"])
    assert exit_info.value.code == 0
    (run,) = tmp_path.glob("a-*-seed0")
    init = json.loads((run / "results.json").read_text())["init"]
    backbone_file = tmp_path / name / BACKBONE_FILE
    assert init["init"] == f"ssl:{name}" and init["file"] == str(backbone_file)
    assert init["sha256"] == sha256_file(backbone_file)


def test_bad_input_and_damaged_results_are_one_line_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["run", *COMMON, "--tasks", "rotation"]
    for bad, says in (
        (["--prefix", "../../x"], "--prefix '../../x' must be one plain folder name inside --runs-dir"),
        (["--prefix", ""], "--prefix '' must be one plain folder name"),
        (["--seeds", "0,,1"], "--seeds '0,,1' has an empty item"),
        (["--seeds", "-1"], "--seeds '-1' must hold non-negative integers"),
        (["--lr-grid", "0.1,,0.2"], "--lr-grid '0.1,,0.2' has an empty item"),
        (["--downstream-lr-grid", "0.1,"], "--downstream-lr-grid '0.1,' has an empty item"),
    ):
        assert says in _error(tmp_path, capsys, *base, *bad), bad
    assert "--tasks 'rotation,,moco' has an empty item" in _error(tmp_path, capsys, "run", *COMMON, "--tasks",
                                                                  "rotation,,moco")
    monkeypatch.delenv("CXR_CHEXPERT_ROOT", raising=False)
    assert "pass --downstream-root or set CXR_CHEXPERT_ROOT" in _error(tmp_path, capsys, *base, "--downstream",
                                                                        "chexpert")
    assert "pass --downstream-eval-root or set CXR_CHEXPERT_ROOT" in _error(
        tmp_path, capsys, *base, "--downstream-eval", "chexpert", "--version", "1")
    store = tmp_path / "store.zarr"
    write_store(store)  # v1-0s
    err = _error(tmp_path / "runs", capsys, *base, "--downstream", "synthetic", "--downstream-root", str(store),
                 "--version", "1")
    assert "the val split of synthetic is the validation set of a run on it; pass --downstream-eval (phantom" in err
    assert "--max-length 0: a plan proposes orderings of 2 tasks or more" in _error(
        tmp_path, capsys, "runs", "--plan", "--max-length", "0")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()
    file = tmp_path / "file"
    file.write_text("x")
    assert _error(file, capsys, *base).endswith(f"--runs-dir {file} is a file, not a folder")
    runs = tmp_path / "table"
    for i, run in enumerate((_fake("rotation", ["rotation"], 0, 0.9), _fake("rotation", ["rotation"], 1, 0.1))):
        (runs / f"r{i}").mkdir(parents=True)
        (runs / f"r{i}" / "config.json").write_text(json.dumps({"curriculum": {}}))
        (runs / f"r{i}" / "results.json").write_text(json.dumps(run))
    damaged = runs / "r1" / "results.json"
    damaged.write_text(damaged.read_text()[:60])  # a truncated write: the table must not show seed 0 alone
    assert _error(runs, capsys, "runs").endswith(f"{damaged} is damaged: it cannot be read as a JSON object; "
                                                 "remove it (or its run folder) and run the run again")
    damaged.write_text("{}")
    assert "lacks figures a finished run records" in _error(runs, capsys, "runs")


def test_a_damaged_pretext_store_found_after_the_start_leaves_no_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store.zarr"
    write_store(store)  # v1-0s, 32 px: 40 training images
    chunk = store / "train" / "images" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])  # found only when a step reads it
    runs = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["run", *COMMON, "--data", f"synthetic={store}", "--tasks", "rotation", "--runs-dir", str(runs)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    failed = [line for line in err if line.startswith("rotation-")]  # the step's cell says why it failed
    assert len(failed) == 1 and "images unreadable" in failed[0] and "train block 1" in failed[0]
    assert "1 of 2 cell(s) failed (rotation-" in err[-1] and "1 more not run" in err[-1]
    assert not runs.exists() or not list(runs.iterdir()), list(runs.iterdir())  # no config.json, no empty ssl-steps/


def test_help_shows_one_default_per_option(capsys: pytest.CaptureFixture[str]) -> None:
    from evaluate.finetune import main as finetune

    texts = {}
    for name, command, args in (("ssl", main, ["run", "--help"]), ("finetune", finetune, ["--help"])):
        with pytest.raises(SystemExit):
            command(args)
        texts[name] = " ".join(capsys.readouterr().out.split())
    assert "--max-images MAX_IMAGES at most this many images, a seeded subset (default: every image of --data)" \
        in texts["ssl"]
    assert "(default: [])" not in texts["ssl"] and "(repeatable; default: the task's own)" in texts["ssl"]
    assert "--downstream-eval DOWNSTREAM_EVAL" in texts["ssl"] and "--downstream-eval-root" in texts["ssl"]
    length = texts["finetune"].rsplit("--length LENGTH", 1)[1].split(" --", 1)[0]  # its help, after the usage
    assert length.count("default") == 1 and "when not given" not in length
