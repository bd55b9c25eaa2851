"""Training data at scale: every file format and the column map, bad rows named, workers and streams
that change nothing about a step's rows, exact resume, mixtures, and false negatives kept out of the loss."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pairdata import DataFormatError
from pairdata.trainsets import load_files, load_hf
from tests.conftest import compose_train_config
from tests.train.test_scale import final_weights, losses
from tests.train.test_training import write_pairs
from train.contrastive import train


def real_rows(tmp_path: Path, count: int) -> list[dict]:
    source = write_pairs(tmp_path / "source.jsonl", count)
    return [{"query": r["x"], "positive": r["y"], "id": i} for i, r in enumerate(map(json.loads, source.open()))]


def write_format(rows: list[dict], path: Path) -> Path:
    import pandas as pd

    frame = pd.DataFrame(rows)
    if path.name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".arrow":
        import pyarrow as pa

        table = pa.Table.from_pandas(frame, preserve_index=False)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    return path


@pytest.mark.parametrize("name", ["pairs.jsonl.gz", "pairs.parquet", "pairs.csv", "pairs.arrow"])
def test_every_file_format_reads_the_same_pairs_through_the_column_map(tmp_path, name: str) -> None:
    rows = real_rows(tmp_path, 30)
    path = write_format(rows, tmp_path / name)
    dataset = load_files(str(tmp_path / "pairs.*"), columns={"x": "query", "y": "positive"})
    assert dataset.column_names == ["x", "y"]
    assert [(r["x"], r["y"]) for r in dataset] == [(r["query"], r["positive"]) for r in rows]
    assert path.exists()


def test_globs_folders_and_lists_of_files(tmp_path) -> None:
    rows = real_rows(tmp_path, 20)
    (tmp_path / "shards").mkdir()
    write_format(rows[:10], tmp_path / "shards" / "a.parquet")
    write_format(rows[10:], tmp_path / "shards" / "b.parquet")
    by_folder = load_files(str(tmp_path / "shards"), columns={"x": "query", "y": "positive"})
    by_list = load_files([str(tmp_path / "shards" / "a.parquet"), str(tmp_path / "shards" / "b.parquet")],
                         columns={"x": "query", "y": "positive"})  # fmt: skip
    assert len(by_folder) == len(by_list) == 20
    with pytest.raises(FileNotFoundError, match="matches no files"):
        load_files(str(tmp_path / "nothing-*.parquet"))


def test_a_local_hf_folder_loads_by_name(tmp_path) -> None:
    import datasets

    rows = real_rows(tmp_path, 12)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    dataset = load_hf(str(tmp_path / "saved"), columns={"x": "query", "y": "positive"})
    assert dataset[3] == {"x": rows[3]["query"], "y": rows[3]["positive"]}


def test_a_hub_name_offline_fails_at_once_saying_what_to_download() -> None:
    with pytest.raises(FileNotFoundError, match="huggingface-cli download --repo-type dataset owner/set"):
        load_hf("owner/set")


@pytest.mark.parametrize(
    ("rows", "columns", "message"),
    [
        ([{"query": "a", "positive": "b"}], {"x": "question", "y": "positive"}, "has no column 'question'"),
        ([{"x": "a"}], None, "has no column 'y'"),
        ([{"x": "a", "y": "b"}, {"x": "c", "y": "  "}], None, "row 1: column 'y' must be a non-empty string"),
        ([{"x": "a", "y": "b"}, {"x": None, "y": "d"}], None, "row 1: column 'x' must be a non-empty string"),
        ([{"x": 1, "y": "b"}], None, "column 'x' .* must hold strings"),
        ([{"x": "a", "y": "b", "negatives": ["n", ""]}], None, "row 0: column 'negatives' holds an empty negative"),
        ([{"x": "a", "y": "b", "negatives": "n"}], None, "must hold lists of strings"),
    ],
    ids=["mapped-column-missing", "column-missing", "blank", "null", "not-a-string", "empty-negative", "negatives"],
)
def test_bad_rows_and_columns_are_named(tmp_path, rows, columns, message: str) -> None:
    path = tmp_path / "bad.parquet"
    write_format(rows, path)
    with pytest.raises(DataFormatError, match=message) as caught:
        load_files(str(path), columns=columns)
    assert str(path) in str(caught.value)


def test_a_malformed_jsonl_gz_names_its_file_and_line(tmp_path) -> None:
    path = tmp_path / "broken.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write('{"x": "a", "y": "b"}\n{"x": "a", \n')
    with pytest.raises(DataFormatError, match=f"{path}:2: not valid JSON"):
        load_files(str(path))
    truncated = tmp_path / "truncated.jsonl.gz"
    lines = "".join(json.dumps({"x": f"query {i * 7919 % 1000003}", "y": f"doc {i**3}"}) + "\n" for i in range(3000))
    whole = gzip.compress(lines.encode())
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataFormatError, match="cannot be decompressed"):
        load_files(str(truncated))
    not_gzip = tmp_path / "plain.jsonl.gz"
    not_gzip.write_text('{"x": "a", "y": "b"}\n')
    with pytest.raises(DataFormatError, match=f"{not_gzip}:1: cannot be decompressed"):
        load_files(str(not_gzip))
    bad_utf8 = tmp_path / "latin1.jsonl"
    bad_utf8.write_bytes(b'{"x": "a", "y": "b"}\n{"x": "caf\xe9", "y": "b"}\n')
    expected = f"{bad_utf8}:2: row 1: column 'x' holds text that is not valid UTF-8"
    with pytest.raises(DataFormatError, match=expected) as caught:
        load_files(str(bad_utf8))
    assert len(str(caught.value)) < 300


def step_losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"] for record in records if "loss" in record]


def files_overrides(path: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return ["model=tiny-random", "trainer=tiny", "logging=none", "data=files", f"data.path={path}",
            "data.columns.x=query", "data.columns.y=positive", "trainer.max_length=48", *extra]  # fmt: skip


def test_workers_give_the_same_training_as_the_training_process(tmp_path) -> None:
    path = write_format(real_rows(tmp_path, 40), tmp_path / "pairs.parquet")
    runs = {}
    for workers in (0, 2):
        extra = ("trainer.steps=6", "trainer.batch_size=8", f"trainer.num_workers={workers}", "trainer.val_pairs=8")
        cfg = compose_train_config(files_overrides(path, extra), tmp_path / f"w{workers}")
        train(cfg, tmp_path / f"w{workers}" / "run")
        runs[workers] = tmp_path / f"w{workers}" / "run"
    assert step_losses(runs[2]) == step_losses(runs[0])
    left, right = final_weights(runs[2], 6), final_weights(runs[0], 6)
    assert all(torch.equal(left[name], right[name]) for name in left)


def resume_from_copy(tmp_path: Path, overrides: list[str], steps: int, at: int) -> tuple[Path, Path]:
    """A full run with a checkpoint at ``at``; then a second run resumed from a copy of that checkpoint."""
    common = [*overrides, f"trainer.steps={steps}", f"trainer.checkpoint_every={at}", "trainer.keep_checkpoints=0",
              "+model.random_config.attention_dropout=0.1"]  # fmt: skip
    reference = tmp_path / "reference"
    train(compose_train_config(common, tmp_path), reference)
    resumed = tmp_path / "resumed"
    name = f"step-{at:06d}"
    shutil.copytree(reference / "checkpoints" / name, resumed / "checkpoints" / name)
    train(compose_train_config([*common, "resume=auto"], tmp_path), resumed)
    return reference, resumed


def test_resume_with_workers_is_bit_identical(tmp_path) -> None:
    path = write_format(real_rows(tmp_path, 40), tmp_path / "pairs.parquet")
    reference, resumed = resume_from_copy(
        tmp_path, files_overrides(path, ("trainer.batch_size=8", "trainer.num_workers=2")), steps=6, at=3
    )
    left, right = final_weights(resumed, 6), final_weights(reference, 6)
    assert all(torch.equal(left[name], right[name]) for name in left)
    assert losses(resumed)[-3:] == losses(reference)[-3:]


def test_streamed_files_train_and_resume_exactly_from_the_saved_stream_position(tmp_path) -> None:
    rows = real_rows(tmp_path, 44)
    (tmp_path / "shards").mkdir()
    for shard in range(4):
        write_format(rows[shard * 11 : (shard + 1) * 11], tmp_path / "shards" / f"part-{shard}.parquet")
    overrides = files_overrides(tmp_path / "shards", ("data.streaming=true", "trainer.batch_size=8"))
    reference, resumed = resume_from_copy(tmp_path, overrides, steps=8, at=3)  # 64 rows: the stream wraps once
    state = json.loads((reference / "checkpoints" / "step-000003" / "data_state" / "rank-0.json").read_text())
    assert state["rows_read"] == 24 and state["epoch"] == 0
    left, right = final_weights(resumed, 8), final_weights(reference, 8)
    assert all(torch.equal(left[name], right[name]) for name in left)
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert "epoch" not in records[-1] and records[-1]["samples_seen"] == 64


def test_a_streamed_parquet_file_is_one_shard_per_row_group_in_file_order(tmp_path) -> None:
    """Arrow decodes ahead through a whole fragment: one shard per row group bounds what a stream holds."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.distributed import split_dataset_by_node

    rows = real_rows(tmp_path, 50)
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=10)
    columns = {"x": "query", "y": "positive"}
    whole = load_files(str(path), columns=columns, streaming=True, reshard=False)
    stream = load_files(str(path), columns=columns, streaming=True)
    assert (whole.num_shards, stream.num_shards) == (1, 5)
    assert [r["x"] for r in stream] == [r["query"] for r in rows] == [r["x"] for r in whole]
    halves = [[r["x"] for r in split_dataset_by_node(stream, rank=rank, world_size=2)] for rank in (0, 1)]
    assert sorted(halves[0] + halves[1]) == sorted(r["query"] for r in rows)


def test_a_stream_with_an_option_that_needs_its_length_is_refused(tmp_path) -> None:
    path = write_format(real_rows(tmp_path, 20), tmp_path / "pairs.parquet")
    cfg = compose_train_config(files_overrides(path, ("data.streaming=true", "trainer.val_pairs=4")), tmp_path)
    with pytest.raises(ValueError, match="val_pairs needs the dataset's length"):
        train(cfg, tmp_path / "run")


def test_a_mixture_with_same_source_batches_trains_each_step_on_one_source(tmp_path, monkeypatch) -> None:
    import train.loop as loop

    rows = real_rows(tmp_path, 60)
    for name, part in (("first", rows[:20]), ("second", rows[20:])):
        write_format([{**row, "query": f"{name}: {row['query']}"} for row in part], tmp_path / f"{name}.parquet")
    members = [f"+data.datasets.{name}={{_target_: pairdata.trainsets.load_files, path: {tmp_path / name}.parquet, "
               "columns: {x: query, y: positive}}" for name in ("first", "second")]  # fmt: skip
    seen: list[set[str]] = []
    real_backward = loop.backward_step

    def spy(run, micro, last):
        texts = run.embedder.tokenizer.batch_decode(micro["input_ids"][: len(micro["x_keys"])])
        seen.append({text.split(":")[0].split(">")[-1].strip() for text in texts})
        return real_backward(run, micro, last)

    monkeypatch.setattr(loop, "backward_step", spy)
    overrides = ["model=tiny-random", "trainer=tiny", "logging=none", "data=mixture", "~data.datasets", *members,
                 "trainer.steps=12", "trainer.batch_size=8", "trainer.val_pairs=6"]  # fmt: skip
    result = train(compose_train_config(overrides, tmp_path), tmp_path / "run")
    assert len(seen) == 12 and all(len(names) == 1 for names in seen)
    assert {next(iter(names)) for names in seen} == {"first", "second"}
    assert math.isfinite(result["validation"]["end"]["val_loss"])


def test_repeated_texts_in_a_batch_are_not_negatives() -> None:
    from train.losses import InfoNCE

    x = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    y = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    scale = torch.tensor(10.0)
    loss = InfoNCE()
    distinct = torch.arange(4)
    assert loss(x, y, scale, distinct, distinct + 10)["loss"].item() == loss(x, y, scale)["loss"].item()
    # rows 0 and 2 share their query: for row 0, y2 is another positive, not a negative (and x2 likewise)
    x_keys = torch.tensor([7, 1, 7, 3])
    masked = loss(x, y, scale, x_keys, distinct + 10)["loss"]
    logits = scale * x @ y.T
    keep = ~torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    by_hand = 0.0
    for matrix in (logits, logits.T):
        for row in range(4):
            candidates = matrix[row][keep[row]]
            by_hand += -(matrix[row, row] - torch.logsumexp(candidates, dim=0)).item() / 4
    assert masked.item() == pytest.approx(by_hand / 2, rel=1e-6)


def test_text_keys_are_stable_and_tell_texts_apart() -> None:
    from train.data import text_keys

    keys = text_keys(["a", "b", "a", "a\ud800b"])
    assert keys[0] == keys[2] and keys[0] != keys[1] and keys.dtype == torch.int64
    assert np.array_equal(keys.numpy(), text_keys(["a", "b", "a", "a\ud800b"]).numpy())


def test_a_mixture_reports_the_rows_each_source_gave_for_the_metrics() -> None:
    from pairdata.pairs import Pair
    from pairdata.trainsets import Mixture, from_pairs
    from train.data import build_training_data

    sets = {name: from_pairs([Pair(f"{name} q{i}", f"{name} d{i}") for i in range(size)]) for name, size in
            (("web", 40), ("code", 24))}  # fmt: skip
    options = {"seed": 0, "steps": 30, "batch_size": 4, "accum_steps": 1, "rank": 0, "world_size": 1,
               "val_pairs": 4, "num_workers": 0, "prefetch_factor": 2, "pin_memory": False}  # fmt: skip
    data = build_training_data(Mixture(sets, {"web": 3, "code": 1}), None, **options)
    batcher = data._steps.batcher
    walked = sum(np.bincount(batcher.global_batch(step).sources, minlength=2) for step in range(30))
    assert data.mixture_rows(30) == {"rows/web": int(walked[0]), "rows/code": int(walked[1])}
    assert sum(data.mixture_rows(30).values()) == 120 and data.mixture_rows(0) == {"rows/web": 0, "rows/code": 0}
    single = build_training_data(sets["web"], None, **options)
    assert single.mixture_rows(30) == {}
