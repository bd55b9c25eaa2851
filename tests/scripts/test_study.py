"""The recipe study driver: its plans compose, it runs train -> dev -> test in order, and its table is right."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import study  # noqa: E402

PLANS = sorted((REPO_ROOT / "configs" / "study").glob("*.yaml"))


def plan_in(tmp_path: Path, source: Path = REPO_ROOT / "configs" / "study" / "similarity.yaml"):
    plan = OmegaConf.load(source)
    plan.runs_dir = str(tmp_path / "runs")
    plan.output_dir = str(tmp_path / "reports")
    path = tmp_path / "plan.yaml"
    OmegaConf.save(plan, path)
    return study.load_plan(path)


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_every_run_of_the_shipped_plans_composes(path: Path) -> None:
    """Each run's overrides are real config keys: a typo fails here, not an hour into a study."""
    from hydra import compose, initialize_config_dir

    plan = study.load_plan(path)
    with initialize_config_dir(str(REPO_ROOT / "configs"), version_base="1.3"):
        for job in study.jobs(plan, None, None):
            overrides = [o for o in job.overrides if not o.startswith("model.pretrained=")]
            cfg = compose("train", overrides=[*overrides, f"seed={job.seed}"])
            assert cfg.trainer.steps >= 1, job.label
    init = [run.init for run in plan.runs.values() if run.get("init")]
    labels = {job.label for job in study.jobs(plan, None, None)}
    assert set(init) <= labels, "an init names a run-seed the plan does not have"


def test_unknown_runs_and_missing_keys_are_named(tmp_path: Path) -> None:
    plan = plan_in(tmp_path)
    with pytest.raises(ValueError, match="unknown runs \\['nosuch'\\]"):
        study.jobs(plan, ["nosuch"], None)
    broken = OmegaConf.load(tmp_path / "plan.yaml")
    del broken.dev_key
    OmegaConf.save(broken, tmp_path / "broken.yaml")
    with pytest.raises(ValueError, match="missing key 'dev_key'"):
        study.load_plan(tmp_path / "broken.yaml")


def test_dry_run_orders_train_dev_test_with_the_seed_and_folders(tmp_path: Path, capsys) -> None:
    plan_in(tmp_path)
    study.main(["--plan", str(tmp_path / "plan.yaml"), "--runs", "b16-st250", "--seeds", "1", "--test", "--dry-run"])
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ ")]
    assert len(commands) == 3
    assert "train/contrastive.py" in commands[0] and "seed=1" in commands[0] and "trainer.steps=250" in commands[0]
    assert commands[0].startswith("$ nice -n 10 /usr/bin/time -v")
    assert f"hydra.run.dir={tmp_path / 'runs' / 'b16-st250-s1'}" in commands[0]
    reports = tmp_path / "reports" / "b16-st250-s1"
    assert "+benchmark.split=dev" in commands[1] and commands[1].endswith(f"output_dir={reports / 'dev'}")
    assert "benchmark=sts" in commands[2] and commands[2].endswith(f"output_dir={reports / 'test'}")


def test_init_folder_links_the_checkpoint_weights_and_tokenizer(tmp_path: Path) -> None:
    plan = plan_in(tmp_path)
    checkpoint = tmp_path / "runs" / "pre-s0" / "checkpoints" / "step-000010"
    for name in ("backbone/config.json", "backbone/model.safetensors", "tokenizer/tokenizer.json"):
        (checkpoint / name).parent.mkdir(parents=True, exist_ok=True)
        (checkpoint / name).write_text(name)
    folder = study.init_folder(plan, "pre-s0", dry_run=False)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (folder / "tokenizer.json").read_text() == "tokenizer/tokenizer.json"
    with pytest.raises(FileNotFoundError, match="no full-weight checkpoint"):
        study.init_folder(plan, "absent-s0", dry_run=False)


def test_table_gives_each_seed_the_mean_and_the_spread(tmp_path: Path) -> None:
    plan = plan_in(tmp_path)
    for seed, dev in ((0, 60.0), (1, 64.5)):
        job = next(j for j in study.jobs(plan, ["b16-st60"], [seed]))
        (job.report_dir / "dev").mkdir(parents=True)
        (job.report_dir / "dev" / "results.json").write_text(json.dumps({"scores": {plan.dev_key: dev}}))
        record = {"wall_s": 120.0 + 60 * seed, "load_before": 1.0, "load_after": 2.0, "val_acc_end": 0.9}
        job.train_record.write_text(json.dumps(record))
    rows = study.summary_rows(plan, study.jobs(plan, None, None))
    assert len(rows) == 3  # header, rule, one run
    cells = [c.strip() for c in rows[2].strip("|").split("|")]
    assert cells[0] == "b16-st60" and cells[2] == "0,1"
    assert cells[3:6] == ["60.00 / 64.50", "62.25", "4.50"]
    assert cells[-2] == "2.5"  # mean wall minutes


def test_time_report_is_parsed(tmp_path: Path) -> None:
    report = tmp_path / "time.txt"
    report.write_text(
        "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03.5\n\tMaximum resident set size (kbytes): 2097152\n"
    )
    assert study.parse_time_v(report) == {"wall_s": 3723.5, "peak_rss_mib": 2048}
