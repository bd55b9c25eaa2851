"""The throughput benchmark's table: ratios against the peer and the per-round offline ceiling."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_throughput.py"


def load_script():
    spec = importlib.util.spec_from_file_location("serve_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def level(rate: float) -> dict:
    return {"requests_per_s": rate, "p50_ms": 10.0, "p99_ms": 20.0}


def test_table_sets_each_round_against_its_own_ceiling():
    script = load_script()
    results = {
        "levels": {
            "1": {"ours": [level(10), level(12)], "infinity": [level(8), level(8)]},
            "32": {"ours": [level(30), level(45)], "infinity": [level(15), level(15)]},
        },
        "offline_rounds": [{"fp32": 40.0}, {"fp32": 50.0}],
        "offline_encode_texts_per_s": 45.0,  # the rounds' median
        "engine_rows_per_s": {"fp32": {"8": {"rows_per_s": 30.0, "tokens_per_batch": 120.0}}},
    }  # no answers' diffs nor load averages: a table rebuilt from a log still prints
    lines = script.table(results).splitlines()
    row_32 = next(line for line in lines if line.startswith("| 32 |"))
    assert "| 2.50x | 83% |" in row_32  # median 37.5 over infinity's 15, and over the median ceiling 45
    assert "at 32 clients each round against its own: ours 75% / 90%" in script.table(results)
    assert any(line.endswith("8: 30.0 (120)") for line in lines)
    assert any("not recorded" in line for line in lines)
