"""benchmarks/train_throughput.py: bf16 decided where training decides it, and an empty selection said, not crashed."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from tests.conftest import REPO_ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("train_throughput", REPO_ROOT / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bf16_trainers_are_skipped_by_the_trainers_own_rule_and_nothing_left_is_said(monkeypatch, capsys, tmp_path):
    import models.precision

    script = load_script()
    monkeypatch.setattr(models.precision, "native_bf16", lambda: False)
    monkeypatch.setattr(script, "matmul_peak_gflops", lambda name: {"fp32": 100.0, "bf16": 2.0}[name])
    args = argparse.Namespace(trainers=["st-bf16", "ours-packed-bf16"], force_bf16=False)
    script.throughput_table(args, tmp_path)
    out = capsys.readouterr().out
    assert "skipped ['st-bf16', 'ours-packed-bf16']: this machine has no native bf16" in out
    assert "nothing left to measure" in out


def test_an_emulated_bf16_matmul_is_timed_small_and_warm(monkeypatch) -> None:
    import models.precision

    script = load_script()
    monkeypatch.setattr(models.precision, "native_bf16", lambda: False)
    assert script.matmul_peak_gflops("bf16", size=64, repeats=1) > 0  # emulated: one small warm product
