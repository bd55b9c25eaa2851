"""Training throughput against sentence-transformers, and peak memory with and without GradCache.

Two tables, both measured in the same run on this machine:

1. pairs/s of our trainer vs ``SentenceTransformerTrainer`` with
   ``MultipleNegativesSymmetricRankingLoss`` (the same symmetric in-batch-negatives objective) on the
   same decoder, batch size, sequence length and data (STS-B/MRPC paraphrase pairs), full
   fine-tuning, fp32, median seconds per step after one warm-up step;
2. peak RSS of one training step of our trainer at several batch sizes, plain and with GradCache
   (each configuration in a fresh process, read from ``VmHWM``).

Usage:
    python benchmarks/train_throughput.py                       # SmolLM2-135M, batch 16, 32 tokens
    python benchmarks/train_throughput.py --model tiny --steps 6 --memory-batches 64 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MEMORY_MODEL = {  # a small random Llama: big batches fit in RAM, activations still dominate
    "model_type": "llama", "hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
}  # fmt: skip
TINY_MODEL = {**MEMORY_MODEL, "hidden_size": 64, "intermediate_size": 128}


def write_pairs(path: Path, data_dir: Path) -> int:
    from pairdata.paraphrase import senteval_paraphrase_pairs

    pairs = senteval_paraphrase_pairs(str(data_dir / "senteval"))
    with path.open("w") as handle:
        for pair in pairs:
            handle.write(json.dumps({"x": pair.x, "y": pair.y}) + "\n")
    return len(pairs)


def compose(overrides: list[str], output_dir: Path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[f"hydra.run.dir={output_dir}", *overrides], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def model_overrides(model: str) -> list[str]:
    if model == "tiny":
        return ["model=tiny-random"] + [f"model.random_config.{k}={v}" for k, v in TINY_MODEL.items()]
    return [f"model={model}"]


def ours_seconds_per_step(
    model: str, data_overrides: list[str], batch: int, max_length: int, steps: int, work: Path
) -> float:
    """Median s/step (after the first) of our trainer, full fine-tuning, on the data the overrides name."""
    from train.loop import train

    cfg = compose(
        [*model_overrides(model), "trainer=cpu", "logging=none", *data_overrides,
         f"trainer.steps={steps}", f"trainer.batch_size={batch}", f"trainer.max_length={max_length}",
         "trainer.train_top_layers=null", "trainer.val_pairs=0", "trainer.eval_every=0", "trainer.warmup_steps=0"],
        work,
    )  # fmt: skip
    train(cfg, work)
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(batch / r["pairs_per_s"] for r in records[1:])


def backbone_folder(model: str, work: Path) -> str:
    """A plain HF folder of the same decoder for sentence-transformers to load."""
    if model == "tiny":
        from models import load_backbone

        backbone, tokenizer = load_backbone(None, random_config=TINY_MODEL)
        backbone.save_pretrained(work / "tiny")
        tokenizer.save_pretrained(work / "tiny")
        return str(work / "tiny")
    from omegaconf import OmegaConf

    from models import resolve_pretrained

    return resolve_pretrained(OmegaConf.load(REPO_ROOT / "configs" / "model" / f"{model}.yaml").pretrained)


def sentence_transformers_seconds_per_step(
    folder: str, data: Path, batch: int, max_length: int, steps: int, work: Path
) -> float:
    from datasets import Dataset

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    dataset = Dataset.from_dict({"anchor": [r["x"] for r in rows], "positive": [r["y"] for r in rows]})
    return sentence_transformers_seconds(folder, dataset, batch, max_length, steps, work)


def sentence_transformers_seconds(
    folder: str, dataset, batch: int, max_length: int, steps: int, work: Path, loss: str = "symmetric"
) -> float:
    """Median s/step (after the first) of ``SentenceTransformerTrainer`` on ``dataset`` (columns
    ``anchor``, ``positive`` and any ``negative_*``), last-token pooling over the decoder folder,
    fp32, CPU; ``loss``: ``symmetric`` (MNSRL) or ``mnrl`` (MultipleNegativesRankingLoss)."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.losses import MultipleNegativesRankingLoss, MultipleNegativesSymmetricRankingLoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from sentence_transformers.training_args import SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    transformer = Transformer(folder, max_seq_length=max_length)
    if transformer.tokenizer.pad_token is None:
        transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
    pooling = Pooling(transformer.get_word_embedding_dimension(), pooling_mode="lasttoken")
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")
    durations: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            durations.append(time.perf_counter() - self.started)

    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(work), per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-4,
        warmup_steps=0, report_to="none", save_strategy="no", logging_steps=steps, use_cpu=True, seed=0,
        dataloader_drop_last=True,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(
        model=model, args=arguments, train_dataset=dataset,
        loss=(MultipleNegativesSymmetricRankingLoss if loss == "symmetric" else MultipleNegativesRankingLoss)(model),
        callbacks=[StepTimer()],
    )  # fmt: skip
    trainer.train()
    return statistics.median(durations[1:])


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries that over from
    the parent across fork+exec, so a child of a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_one(batch: int, chunk: int | None, max_length: int, data: Path) -> None:
    """One training step in this process; print peak RSS (MiB) and seconds as JSON."""
    from train.loop import train

    with tempfile.TemporaryDirectory() as work:
        cfg = compose(
            ["model=tiny-random", *[f"model.random_config.{k}={v}" for k, v in MEMORY_MODEL.items()],
             "trainer=tiny", "logging=none", "data=jsonl", f"data.path={data}", "trainer.steps=1",
             f"trainer.batch_size={batch}", f"trainer.max_length={max_length}",
             f"trainer.gradcache_chunk={chunk if chunk else 'null'}"],
            Path(work),
        )  # fmt: skip
        started = time.perf_counter()
        train(cfg, Path(work))
        seconds = time.perf_counter() - started
    peak_mib = peak_rss_mib()
    print(json.dumps({"batch": batch, "chunk": chunk, "peak_rss_mib": peak_mib, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a configs/model option, or 'tiny'")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="steps per trainer; the first is warm-up")
    parser.add_argument("--memory-batches", type=int, nargs="*", default=[64, 256, 1024])
    parser.add_argument("--memory-chunk", type=int, default=32)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("CPT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--memory-one", nargs=2, type=int, metavar=("BATCH", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = scratch / "pairs.jsonl"
        count = write_pairs(data, args.data_dir)
        if args.memory_one:
            batch, chunk = args.memory_one
            memory_one(batch, chunk or None, args.max_length, data)
            return
        import torch

        print(f"# {count} training pairs; torch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs")
        if not args.skip_throughput:
            ours = ours_seconds_per_step(
                args.model, ["data=jsonl", f"data.path={data}"], args.batch, args.max_length, args.steps,
                scratch / "ours",
            )  # fmt: skip
            theirs = sentence_transformers_seconds_per_step(
                backbone_folder(args.model, scratch), data, args.batch, args.max_length, args.steps, scratch / "st"
            )
            setting = f"{args.model}, batch {args.batch}, {args.max_length} tokens, full fine-tuning"
            print(f"\n## Training throughput: {setting}\n")
            print("| trainer | s/step (median) | pairs/s | ratio |")
            print("|---|---|---|---|")
            print(f"| sentence-transformers MNSRL | {theirs:.2f} | {args.batch / theirs:.2f} | 1.00 |")
            print(f"| ours | {ours:.2f} | {args.batch / ours:.2f} | {theirs / ours:.2f} |")
        if args.memory_batches:
            print(f"\n## Peak RSS of one step (random Llama, hidden {MEMORY_MODEL['hidden_size']}, "
                  f"{MEMORY_MODEL['num_hidden_layers']} layers, {args.max_length} tokens)\n")  # fmt: skip
            cached = f"GradCache (chunk {args.memory_chunk})"
            print(f"| batch | plain: peak RSS MiB | plain: s | {cached}: peak RSS MiB | {cached}: s |")
            print("|---|---|---|---|---|")
            for batch in args.memory_batches:
                row = []
                for chunk in (0, args.memory_chunk):
                    command = [sys.executable, __file__, "--memory-one", str(batch), str(chunk),
                               "--max-length", str(args.max_length), "--data-dir", str(args.data_dir)]  # fmt: skip
                    done = subprocess.run(command, capture_output=True, text=True, check=True)
                    row.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"| {batch} | {row[0]['peak_rss_mib']:.0f} | {row[0]['seconds']:.1f} | "
                      f"{row[1]['peak_rss_mib']:.0f} | {row[1]['seconds']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
