"""Checkpoints that cannot be half-deleted, resumes that unpickle nothing, logs that restart cleanly,
and config values of the wrong type named."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from models.embedder import resolve_checkpoint_dir
from tests.conftest import compose_train_config
from tests.train.test_training import tiny_overrides
from train.checkpoint import find_resume_checkpoint, list_checkpoints
from train.contrastive import train


def run_with_checkpoints(tmp_path: Path, steps: int = 3) -> Path:
    extra = ("trainer.checkpoint_every=1", "trainer.keep_checkpoints=0")
    cfg = compose_train_config(tiny_overrides(tmp_path, pairs=8, steps=steps, extra=extra), tmp_path)
    train(cfg, tmp_path / "run")
    return tmp_path / "run"


def test_a_checkpoint_without_its_weights_is_not_complete(tmp_path) -> None:
    run = run_with_checkpoints(tmp_path)
    newest = run / "checkpoints" / "step-000003"
    for weights in (newest / "backbone").glob("*.safetensors"):  # what a kill mid-delete used to leave
        weights.unlink()
    assert [p.name for p in list_checkpoints(run)] == ["step-000001", "step-000002"]
    assert resolve_checkpoint_dir(run).name == "step-000002"
    assert find_resume_checkpoint(run, "auto").name == "step-000002"
    with pytest.raises(FileNotFoundError, match="not a complete training checkpoint.*missing"):
        find_resume_checkpoint(run, str(newest))


def test_pruning_renames_before_deleting_and_a_rerun_finishes_the_delete(tmp_path, monkeypatch) -> None:
    import train.checkpoint as checkpoint

    seen = []
    real = shutil.rmtree

    def watching_rmtree(path, *args, **kwargs):
        seen.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", watching_rmtree)
    extra = ("trainer.checkpoint_every=1", "trainer.keep_checkpoints=1")
    cfg = compose_train_config(tiny_overrides(tmp_path, pairs=8, steps=3, extra=extra), tmp_path)
    train(cfg, tmp_path / "run")
    deleted = [name for name in seen if "step-" in name and not name.endswith(".tmp")]
    assert deleted and all(name.startswith(".step-") and name.endswith(".deleting") for name in deleted)
    leftover = tmp_path / "run" / "checkpoints" / ".step-000001.deleting"  # a kill between rename and delete
    leftover.mkdir()
    cfg.resume = "auto"
    cfg.trainer.steps = 4
    train(cfg, tmp_path / "run")
    assert not leftover.exists()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000004"]


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resuming_unpickles_nothing_and_refuses_a_planted_pickle(tmp_path) -> None:
    run = run_with_checkpoints(tmp_path, steps=2)
    assert pickle.loads(pickle.dumps(Payload(tmp_path / "probe"))) is None and (tmp_path / "probe").exists()
    extra = ("trainer.checkpoint_every=1", "trainer.keep_checkpoints=0", "resume=auto")
    cfg = compose_train_config(tiny_overrides(tmp_path, pairs=8, steps=2, extra=extra), tmp_path)

    clean = tmp_path / "clean"  # a copied checkpoint resumes from JSON and weights_only loads
    shutil.copytree(run / "checkpoints" / "step-000001", clean / "checkpoints" / "step-000001")
    train(cfg, clean)
    written = clean / "checkpoints" / "step-000002"
    assert (written / "scheduler.json").is_file()
    assert not list((written / "training_state").glob("custom_checkpoint_*.pkl"))
    resumed = json.loads((written / "trainer_state.json").read_text())["metrics"]
    original = json.loads((run / "checkpoints" / "step-000002" / "trainer_state.json").read_text())["metrics"]
    assert resumed["lr"] == original["lr"] and resumed["loss"] == original["loss"]

    planted = tmp_path / "planted"
    shutil.copytree(run / "checkpoints" / "step-000001", planted / "checkpoints" / "step-000001")
    marker = tmp_path / "payload-ran"
    state = planted / "checkpoints" / "step-000001" / "training_state"
    (state / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match="pickled objects"):
        train(cfg, planted)
    assert not marker.exists()


def test_a_restart_before_the_first_checkpoint_starts_the_metrics_again(tmp_path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')
    cfg = compose_train_config(tiny_overrides(tmp_path, pairs=8, steps=3, extra=("resume=auto",)), tmp_path)
    train(cfg, tmp_path / "run")
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


@pytest.mark.parametrize(
    ("override", "message"),
    [("trainer.steps=abc", r"trainer.steps must be of type int, got 'abc'"),
     ("trainer.lr=fast", r"trainer.lr must be of type float, got 'fast'"),
     ("trainer.num_workers=1.5", r"trainer.num_workers must be of type int, got 1.5")],
)  # fmt: skip
def test_a_trainer_value_of_the_wrong_type_is_named(tmp_path, override: str, message: str) -> None:
    cfg = compose_train_config(tiny_overrides(tmp_path, pairs=4, steps=1, extra=(override,)), tmp_path)
    with pytest.raises(ValueError, match=message):
        train(cfg, tmp_path / "run")


def test_every_checkpoint_is_sealed_by_a_manifest_of_all_its_files(tmp_path) -> None:
    run = run_with_checkpoints(tmp_path, steps=2)
    newest = run / "checkpoints" / "step-000002"
    manifest = json.loads((newest / "manifest.json").read_text())["files"]
    on_disk = {p.relative_to(newest).as_posix() for p in newest.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(manifest) == on_disk and "training_state/random_states_0.pkl" in manifest
    assert all(entry["size"] == (newest / name).stat().st_size for name, entry in manifest.items())


@pytest.mark.parametrize("damage", ["truncated weights", "flipped byte in the optimizer", "corrupt RNG state"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog, damage: str) -> None:
    run = run_with_checkpoints(tmp_path, steps=3)
    state = run / "checkpoints" / "step-000003" / "training_state"
    target = state / {"truncated weights": "model.safetensors", "flipped byte in the optimizer": "optimizer.bin",
                      "corrupt RNG state": "random_states_0.pkl"}[damage]  # fmt: skip
    data = bytearray(target.read_bytes())
    if damage == "truncated weights":
        data = data[: len(data) // 2]  # what a power cut before the data reached the disk leaves
    else:
        data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    target.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="train.checkpoint"):
        assert find_resume_checkpoint(run, "auto").name == "step-000002"
    assert "skipping damaged checkpoint step-000003" in caplog.text
    with pytest.raises(FileNotFoundError, match="not a complete training checkpoint"):
        find_resume_checkpoint(run, str(run / "checkpoints" / "step-000003"))
    extra = ("trainer.checkpoint_every=1", "trainer.keep_checkpoints=0", "resume=auto")
    cfg = compose_train_config(tiny_overrides(tmp_path, pairs=8, steps=3, extra=extra), tmp_path)
    train(cfg, run)  # resumes from step 2 and writes step 3 again, whole
    assert find_resume_checkpoint(run, "auto").name == "step-000003"


def test_an_unreadable_rng_state_is_an_error_not_a_silent_loss_of_exactness(tmp_path) -> None:
    run = run_with_checkpoints(tmp_path, steps=2)
    newest = run / "checkpoints" / "step-000002"
    (newest / "manifest.json").unlink()  # a checkpoint of an older version: no manifest to catch it
    (newest / "training_state" / "random_states_0.pkl").write_bytes(b"not a pickle")
    extra = ("trainer.checkpoint_every=1", "trainer.keep_checkpoints=0", "resume=auto")
    cfg = compose_train_config(tiny_overrides(tmp_path, pairs=8, steps=3, extra=extra), tmp_path)
    with pytest.raises(ValueError, match="random_states_0.pkl: the RNG state of process 0 is unreadable"):
        train(cfg, run)
