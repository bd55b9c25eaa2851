"""Hard negatives: the column layouts, the loss by hand, and the same training whatever the path
(none == today's, GradCache == plain, 2 processes == 1)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pairdata import DataFormatError
from pairdata.trainsets import load_files
from tests.conftest import compose_train_config
from tests.train.test_scale import assert_same_weights, final_weights, losses, run_one_and_two_processes
from tests.train.test_training import write_pairs
from train.contrastive import train
from train.data import NegativeChoice
from train.losses import InfoNCE, Matryoshka, MatryoshkaLoss, symmetric_info_nce


def write_with_negatives(path: Path, count: int, most: int = 3) -> Path:
    """Real STS-B pairs; row i carries ``i % (most + 1)`` negatives: the positives of the next rows."""
    rows = [json.loads(line) for line in write_pairs(path.with_suffix(".plain.jsonl"), count).open()]
    with path.open("w") as handle:
        for i, row in enumerate(rows):
            negatives = [rows[(i + j) % count]["y"] for j in range(1, i % (most + 1) + 1)]
            handle.write(json.dumps({**row, "negatives": negatives}) + "\n")
    return path


def overrides(data: Path, *extra: str) -> list[str]:
    return ["model=tiny-random", "trainer=tiny", "logging=none", "data=jsonl", f"data.path={data}",
            "trainer.max_length=48", *extra]  # fmt: skip


# ---- the loss ------------------------------------------------------------------------------------


def test_loss_with_a_hard_negative_matches_the_hand_computed_value() -> None:
    # x0=(1,0), x1=(0,1); y0=(0.6,0.8), y1=(0.8,-0.6); one negative n=(0,1); scale 10.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[0.6, 0.8], [0.8, -0.6]])
    negative = torch.tensor([[0.0, 1.0]])
    # x->y logits over [y0, y1, n]: row0 [6, 8, 0], row1 [8, -6, 10]; y->x over [x0, x1] as without negatives.
    row0 = -math.log(math.exp(6) / (math.exp(6) + math.exp(8) + math.exp(0)))
    row1 = -math.log(math.exp(-6) / (math.exp(8) + math.exp(-6) + math.exp(10)))
    back0 = -math.log(math.exp(6) / (math.exp(6) + math.exp(8)))
    back1 = -math.log(math.exp(-6) / (math.exp(8) + math.exp(-6)))
    expected = ((row0 + row1) / 2 + (back0 + back1) / 2) / 2
    out = symmetric_info_nce(x, y, torch.tensor(10.0), negatives=negative)
    assert out["contrastive_loss"].item() == pytest.approx(expected, rel=1e-6)


def test_no_negatives_is_the_plain_loss_exactly() -> None:
    generator = torch.Generator().manual_seed(0)
    x, y = (F.normalize(torch.randn(6, 8, generator=generator), dim=1) for _ in range(2))
    scale = torch.tensor(20.0)
    plain = InfoNCE()(x, y, scale)
    empty = InfoNCE()(x, y, scale, negatives=torch.zeros(0, 8), negative_keys=torch.zeros(0, dtype=torch.int64))
    assert torch.equal(plain["loss"], empty["loss"]) and torch.equal(plain["accuracy"], empty["accuracy"])


def test_a_negative_with_the_rows_own_positive_text_is_left_out_of_that_row_only() -> None:
    generator = torch.Generator().manual_seed(1)
    x, y = (F.normalize(torch.randn(3, 8, generator=generator), dim=1) for _ in range(2))
    other = F.normalize(torch.randn(1, 8, generator=generator), dim=1)
    keys = torch.tensor([10, 11, 12])
    scale = torch.tensor(5.0)
    loss = InfoNCE()
    # a copy of y1 (same text) among the negatives: row 1 must not see it, rows 0 and 2 must.
    with_copy = loss(x, y, scale, keys, keys, torch.cat([y[1:2], other]), torch.tensor([11, 99]))
    logits = scale * x @ torch.cat([y, y[1:2], other]).T
    logits[1, 3] = float("-inf")
    forward = F.cross_entropy(logits, torch.arange(3))
    backward = F.cross_entropy(scale * y @ x.T, torch.arange(3))
    assert with_copy["loss"].item() == pytest.approx(((forward + backward) / 2).item(), rel=1e-6)


def test_matryoshka_truncates_the_negatives_with_the_pairs() -> None:
    generator = torch.Generator().manual_seed(2)
    x, y, negatives = (F.normalize(torch.randn(n, 16, generator=generator), dim=1) for n in (4, 4, 5))
    scale = torch.tensor(10.0)
    out = MatryoshkaLoss(InfoNCE(), Matryoshka((8, 16), (0.5, 1.0)))(x, y, scale, negatives=negatives)
    prefix = InfoNCE()(*(F.normalize(t[:, :8], dim=1) for t in (x, y)), scale, negatives=F.normalize(negatives[:, :8]))
    full = InfoNCE()(x, y, scale, negatives=negatives)
    assert out["loss"].item() == pytest.approx(0.5 * prefix["loss"].item() + full["loss"].item(), rel=1e-6)


# ---- which negatives a row gives -----------------------------------------------------------------


def test_negative_choice_drops_the_positive_caps_by_sampling_and_keeps_short_rows() -> None:
    choice = NegativeChoice(count=2, seed=0)
    ys = ["a", "b", "c"]
    rows = [["a", "p", "q", "r"], ["q"], None]
    chosen, dropped = choice.pick(ys, rows, key=5)
    assert dropped == [1, 0, 0]
    assert len(chosen[0]) == 2 and set(chosen[0]) <= {"p", "q", "r"}
    assert chosen[1:] == [["q"], []]
    assert choice.pick(ys, rows, key=5) == (chosen, dropped)  # a pure function of (seed, key)
    assert {tuple(choice.pick(ys, rows, key=k)[0][0]) for k in range(20)} == {("p", "q"), ("p", "r"), ("q", "r")}


# ---- the layouts of the negatives column ---------------------------------------------------------


def rows_for_layouts() -> list[dict]:
    return [
        {"q": "what is a cat", "d": "a cat is a small mammal", "negative_1": "dogs bark", "negative_2": "fish swim",
         "negative_10": "birds fly", "hard": ["dogs bark"]},
        {"q": "how to boil an egg", "d": "put the egg in boiling water", "negative_1": "fry the bacon",
         "negative_2": None, "negative_10": "bake bread", "hard": []},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hard", [["dogs bark"], []]),
        ("negative_1", [["dogs bark"], ["fry the bacon"]]),
        ("negative_*", [["dogs bark", "fish swim", "birds fly"], ["fry the bacon", "bake bread"]]),
        (["negative_10", "negative_1"], [["birds fly", "dogs bark"], ["bake bread", "fry the bacon"]]),
    ],
    ids=["list-column", "one-string-column", "pattern", "list-of-columns"],
)
def test_every_layout_of_negatives_becomes_one_list_column(tmp_path, spec, expected) -> None:
    import pandas as pd

    path = tmp_path / "triplets.parquet"
    pd.DataFrame(rows_for_layouts()).to_parquet(path)
    for streaming in (False, True):
        dataset = load_files(str(path), columns={"x": "q", "y": "d", "negatives": spec}, streaming=streaming)
        assert [row["negatives"] for row in dataset] == expected
        assert sorted(next(iter(dataset))) == ["negatives", "x", "y"]


@pytest.mark.parametrize(
    ("rows", "spec", "message"),
    [
        (
            [{"x": "a", "y": "b", "negatives": ["c", " "]}],
            "negatives",
            "row 0: column 'negatives' holds an empty negative",
        ),
        ([{"x": "a", "y": "b", "negatives": [1, 2]}], "negatives", "must hold lists of strings"),
        ([{"x": "a", "y": "b", "n1": "c"}], "m*", "no column matches data.columns.negatives='m\\*'"),
        ([{"x": "a", "y": "b", "n1": "c"}], ["n1", "n2"], "has no column 'n2' \\(for 'negatives'\\)"),
        ([{"x": "a", "y": "b", "n1": 3}], ["n1"], "column 'n1' \\(for 'negatives'\\) must hold strings"),
    ],
    ids=["empty", "not-strings", "no-match", "missing", "number"],
)
def test_bad_negatives_are_named(tmp_path, rows, spec, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataFormatError, match=message):
        load_files(str(path), columns={"negatives": spec})


# ---- training: neutral setting, GradCache, processes ---------------------------------------------


def test_negatives_off_trains_exactly_as_a_set_without_the_column(tmp_path) -> None:
    runs = {}
    with_negatives = write_with_negatives(tmp_path / "with.jsonl", 16)
    plain = write_pairs(tmp_path / "plain.jsonl", 16)
    for name, data, extra in (
        ("plain", plain, ()),
        ("off", with_negatives, ("trainer.num_negatives=0",)),
        ("none-given", plain, ("trainer.num_negatives=3",)),  # asked for, but no row has any
    ):
        cfg = compose_train_config(overrides(data, "trainer.steps=2", "trainer.batch_size=8", *extra), tmp_path)
        train(cfg, tmp_path / name)
        runs[name] = tmp_path / name
    for name in ("off", "none-given"):
        assert losses(runs[name]) == losses(runs["plain"])
        left, right = final_weights(runs[name], 2), final_weights(runs["plain"], 2)
        assert all(torch.equal(left[key], right[key]) for key in left), name
    records = [json.loads(line) for line in (runs["none-given"] / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["negatives_per_row"] == 0 and records[-1]["rows_short_of_negatives"] == 8


def test_negatives_change_the_training_and_are_counted(tmp_path) -> None:
    data = write_with_negatives(tmp_path / "with.jsonl", 16)
    runs = {}
    for name, count in (("off", 0), ("on", 2)):
        extra = ("trainer.steps=2", "trainer.batch_size=16", "trainer.val_pairs=0", f"trainer.num_negatives={count}")
        train(compose_train_config(overrides(data, *extra), tmp_path), tmp_path / name)
        runs[name] = tmp_path / name
    assert losses(runs["on"]) != losses(runs["off"])
    first = json.loads((runs["on"] / "metrics.jsonl").read_text().splitlines()[0])
    # a step is the whole set: rows carry 0,1,2,3 negatives in turn, capped at 2 -> 1.25 a row, 8 of 16 short
    assert first["negatives_per_row"] == pytest.approx(1.25) and first["rows_short_of_negatives"] == 8


@pytest.mark.parametrize(
    ("accumulate", "matryoshka"), [(1, "null"), (2, "null"), (2, "[8,32]")], ids=["1", "2", "2-matryoshka"]
)
def test_gradcache_equals_the_plain_full_batch_with_negatives(tmp_path, accumulate: int, matryoshka: str) -> None:
    data = write_with_negatives(tmp_path / "with.jsonl", 16)
    runs = {}
    for name, chunk in (("plain", "null"), ("cached", "5")):
        extra = ("trainer.steps=2", f"trainer.gradcache_chunk={chunk}", f"trainer.grad_accum_steps={accumulate}",
                 f"trainer.batch_size={16 // accumulate}", "trainer.temperature_lr=1e-2",
                 f"trainer.matryoshka_dims={matryoshka}", "trainer.num_negatives=3")  # fmt: skip
        train(compose_train_config(overrides(data, *extra), tmp_path), tmp_path / name)
        runs[name] = tmp_path / name
    assert losses(runs["cached"]) == pytest.approx(losses(runs["plain"]), abs=1e-6)
    # Weights to 1e-5, not 1e-6: AdamW divides by sqrt(v) + eps, so where a gradient is of the order of
    # eps (1e-8) the rounding difference between chunked and one-pass gradients moves that element's update
    # by ~1e-6 (one element of 2,048 here under the fused kernel); the losses above hold to 1e-6.
    assert_same_weights(final_weights(runs["cached"], 2), final_weights(runs["plain"], 2), atol=1e-5)


@pytest.mark.multiprocess
@pytest.mark.parametrize("chunk", ["null", "3"], ids=["plain", "gradcache"])
def test_two_processes_equal_one_process_with_negatives(tmp_path, chunk: str) -> None:
    # rows carry 0..3 negatives, so the two processes hold different numbers of them in a step
    data = write_with_negatives(tmp_path / "with.jsonl", 24)
    common = [*overrides(data, "trainer.steps=3", "trainer.num_negatives=3"), "trainer.matryoshka_dims=[8,32]"]
    run_one_and_two_processes(tmp_path, common, chunk)
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-5)
    assert_same_weights(final_weights(tmp_path / "two", 3), final_weights(tmp_path / "one", 3), atol=1e-5)


def test_a_streamed_set_trains_with_its_negatives(tmp_path) -> None:
    import pandas as pd

    rows = [json.loads(line) for line in write_with_negatives(tmp_path / "with.jsonl", 16).open()]
    pd.DataFrame(rows).to_parquet(tmp_path / "with.parquet")
    extra = ("data=files", f"data.path={tmp_path / 'with.parquet'}", "data.streaming=true", "trainer.val_pairs=0",
             "trainer.steps=2", "trainer.batch_size=16", "trainer.num_negatives=2")  # fmt: skip
    train(compose_train_config([*overrides(tmp_path / "unused.jsonl"), *extra], tmp_path), tmp_path / "run")
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["negatives_per_row"] == pytest.approx(1.25) and first["rows_short_of_negatives"] == 8


def test_the_start_log_counts_rows_by_their_negatives(caplog) -> None:
    import datasets

    from train.batching import HeldOut
    from train.data import Source, report_negative_counts

    dataset = datasets.Dataset.from_dict(
        {"x": ["a", "b", "c"], "y": ["d", "e", "f"], "negatives": [["g"], [], ["h", "i"]]}
    )
    with caplog.at_level("INFO", logger="train.data"):
        report = report_negative_counts([Source("set", dataset, HeldOut(3, 0, 0))], cap=2)
    assert report == {"set": {0: 1, 1: 1, 2: 1}}
    assert "set: hard negatives per row (capped at 2) {0: 1, 1: 1, 2: 1}; 2 of 3 rows have fewer than 2" in caplog.text
