"""The export's model cards: base model, training data, scores and the contamination audit, per side."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import TINY_LLAMA, TWO_SIDES


def _checkpoint(tmp_path: Path) -> Path:
    from models import DecoderEmbedder

    checkpoint = tmp_path / "run" / "checkpoints" / "step-000004"
    DecoderEmbedder.build(None, TWO_SIDES, random_config=TINY_LLAMA, seed=0).save_pretrained(checkpoint)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"x": "the weather was mild and the river was calm", "y": "a b c"}) + "\n")
    (checkpoint / "train_config.yaml").write_text(
        "name: search-tiny\nmodel: {pretrained: HuggingFaceTB/SmolLM2-135M}\ntrainer: {steps: 4, batch_size: 2}\n"
        f"data: {{_target_: pairdata.trainsets.load_files, path: {pairs}, cache_dir: {tmp_path / 'arrow'}}}\n"
    )
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 4, "metrics": {"heldout_top1": 0.5}}))
    return checkpoint


def test_cards_name_data_scores_and_the_audit(tmp_path: Path) -> None:
    from pairdata.audit import audit
    from serve.export import main

    checkpoint = _checkpoint(tmp_path)
    bench = tmp_path / "bench" / "senteval" / "STS"
    bench.mkdir(parents=True)
    (bench / "test.tsv").write_text("The weather was mild and the river was calm.\tA cat.\n")
    audit(checkpoint, tmp_path / "bench", None, show_progress=False)
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"benchmark": "beir", "scores": {"beir/arguana/ndcg@10": 21.5}}))
    main([str(tmp_path / "run"), str(tmp_path / "out"), "--max-seq-length", "32", "--results", str(results)])
    info = json.loads((tmp_path / "out" / "export.json").read_text())
    assert info["audit"] == "contamination.json" and (tmp_path / "out" / "contamination.json").is_file()
    for side in TWO_SIDES:
        folder = tmp_path / "out" / "sentence-transformers" / side
        card = (folder / "README.md").read_text()
        assert card.startswith("---\nlibrary_name: sentence-transformers")
        assert "base_model: HuggingFaceTB/SmolLM2-135M" in card
        assert f"the `{side}` side" in card and "| training steps | 4 x 2 pairs |" in card
        assert "| mine |" not in card and "| data | files |" in card  # the one training set, by its loader
        assert "| beir (results.json) | beir/arguana/ndcg@10 | 21.5 |" in card
        assert "| training log, step 4 | heldout_top1 | 0.5 |" in card
        assert "| senteval/STS/test.tsv | 2 | 1 | 50.00 | 0 | 0.00 |" in card
        assert json.loads((folder / "contamination.json").read_text())["complete"] is True


def test_a_card_says_when_the_checkpoint_was_not_audited(tmp_path: Path) -> None:
    from serve.export import export

    info = export(_checkpoint(tmp_path), tmp_path / "out", max_seq_length=32)
    assert info["audit"] is None and not (tmp_path / "out" / "contamination.json").exists()
    card = (tmp_path / "out" / "sentence-transformers" / "doc" / "README.md").read_text()
    assert "Not audited: run `python -m pairdata audit" in card
