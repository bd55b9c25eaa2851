"""Training throughput against sentence-transformers, and peak memory with and without GradCache.

Two tables, both measured in the same run on this machine:

1. tokens/s of our trainer (padded, packed, compiled, bf16) vs ``SentenceTransformerTrainer`` with
   ``MultipleNegativesSymmetricRankingLoss`` (the same symmetric in-batch-negatives objective) on the
   same decoder, batch size, sequence length and data (STS-B/MRPC paraphrase pairs), full
   fine-tuning. Each trainer runs in its own fresh process, the trainers alternate over ``--rounds``
   rounds in a rotating order, and the table gives the median seconds per step (warm-up step left
   out) with the spread; real tokens/s (every token of a row), text tokens/s (less our two
   delimiters per row) and computed tokens/s (padded rows or packed sequences); the fraction of
   this machine's matmul peak (measured in the same run, fp32 and bf16) that 6 x non-embedding
   parameters x real tokens/s reaches; and the ratios to sentence-transformers at the same
   precision. The load average is printed before and after;
2. peak RSS of one training step of our trainer at several batch sizes, plain and with GradCache
   (each configuration in a fresh process, read from ``VmHWM``).

Usage:
    python benchmarks/train_throughput.py                       # SmolLM2-135M, batch 16, 32 tokens
    python benchmarks/train_throughput.py --trainers ours-packed ours-packed-compile --rounds 2
    python benchmarks/train_throughput.py --model tiny --steps 6 --memory-batches 64 256
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# The trainer as the sentence-transformers peer runs by default: padded rows, fp32 (the cpu trainer config's
# own defaults may pack and pick bf16); a measured variant's overrides replace these.
PADDED_FP32 = ("trainer.packing=false", "trainer.mixed_precision=no")


def with_overrides(base: tuple[str, ...], extra: tuple[str, ...]) -> list[str]:
    """``base`` with each key that ``extra`` sets replaced by ``extra``'s value (Hydra refuses a key twice)."""
    chosen = {override.split("=", 1)[0] for override in extra}
    return [override for override in base if override.split("=", 1)[0] not in chosen] + list(extra)


def model_overrides(model: str) -> list[str]:
    if model == "tiny":
        return ["model=tiny-random"] + [f"model.random_config.{k}={v}" for k, v in TINY_MODEL.items()]
    return [f"model={model}"]


@dataclass
class StepTiming:
    """Per timed step (the warm-up step left out): seconds, real tokens (every token of a row, our
    delimiters included), text tokens (real tokens less our two delimiters per row: the tokens both
    trainers see), and tokens the model computed on (padded rows, or packed sequences)."""

    seconds: list[float]
    warmup_seconds: float
    real_tokens: list[int]
    text_tokens: list[int]
    computed_tokens: list[int]

    def summary(self) -> dict[str, float]:
        seconds = sum(self.seconds)
        return {
            "s_per_step": statistics.median(self.seconds),
            "warmup_s": self.warmup_seconds,  # the first step: one-off costs such as torch.compile's
            "real_tokens_per_s": sum(self.real_tokens) / seconds,
            "text_tokens_per_s": sum(self.text_tokens) / seconds,
            "computed_tokens_per_s": sum(self.computed_tokens) / seconds,
            "real_fraction": sum(self.real_tokens) / sum(self.computed_tokens),
        }


class TokenCounter:
    """Counts, per forward of the embedder's backbone, the real, text and computed tokens."""

    def __init__(self) -> None:
        self.real: list[int] = []
        self.text: list[int] = []
        self.computed: list[int] = []

    def install_on_ours(self) -> None:
        """Wraps ``DecoderEmbedder._pool`` (real and text tokens of the padded rows) and, for packed
        steps, ``models.packing.pack_rows`` (the packed size), so nothing is packed twice in a timed step."""
        import models.packing
        from models.embedder import DecoderEmbedder

        pool, pack = DecoderEmbedder._pool, models.packing.pack_rows

        def counted_pool(embedder, backbone, input_ids, attention_mask, pack_tokens=None):
            self.real.append(int(attention_mask.sum()))
            self.text.append(self.real[-1] - 2 * input_ids.shape[0])  # each row: open + text + close
            if pack_tokens is None:
                self.computed.append(input_ids.numel())
            return pool(embedder, backbone, input_ids, attention_mask, pack_tokens)

        def counted_pack(input_ids, attention_mask, capacity):
            packed = pack(input_ids, attention_mask, capacity)
            self.computed.append(packed.input_ids.numel())
            return packed

        DecoderEmbedder._pool = counted_pool
        models.packing.pack_rows = counted_pack

    def install_on_sentence_transformers(self, auto_model) -> None:
        forward = auto_model.forward

        def counted(*args, **kwargs):
            self.real.append(int(kwargs["attention_mask"].sum()))
            self.text.append(self.real[-1])
            self.computed.append(kwargs["input_ids"].numel())
            return forward(*args, **kwargs)

        auto_model.forward = counted

    def timing(self, seconds: list[float], steps: int) -> StepTiming:
        """``seconds`` of every step, the first (warm-up) kept apart, with the counts summed per step
        (forwards split evenly over ``steps``), the warm-up step's dropped."""
        if len(self.real) % steps:
            raise RuntimeError(f"{len(self.real)} backbone forwards do not split into {steps} steps")
        size = len(self.real) // steps

        def per_step(counts: list[int]) -> list[int]:
            return [sum(counts[i : i + size]) for i in range(0, len(counts), size)][1:]

        return StepTiming(seconds[1:], seconds[0], per_step(self.real), per_step(self.text), per_step(self.computed))


def ours_timing(
    model: str,
    data_overrides: list[str],
    batch: int,
    max_length: int,
    steps: int,
    work: Path,
    extra: tuple[str, ...] = (),
) -> StepTiming:
    """Our trainer, full fine-tuning, on the data the overrides name; ``extra``: e.g. packing, precision."""
    from train.contrastive import train

    counter = TokenCounter()
    counter.install_on_ours()
    cfg = compose(
        [*model_overrides(model), "trainer=cpu", "logging=none", *data_overrides,
         f"trainer.steps={steps}", f"trainer.batch_size={batch}", f"trainer.max_length={max_length}",
         "trainer.train_top_layers=null", "trainer.val_pairs=0", "trainer.eval_every=0", "trainer.warmup_steps=0",
         *with_overrides(PADDED_FP32, extra)],
        work,
    )  # fmt: skip
    train(cfg, work)
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    return counter.timing([batch / r["pairs_per_s"] for r in records], steps)


def ours_seconds_per_step(
    model: str, data_overrides: list[str], batch: int, max_length: int, steps: int, work: Path
) -> float:
    """Median s/step (after the first) of our trainer, full fine-tuning, on the data the overrides name."""
    return ours_timing(model, data_overrides, batch, max_length, steps, work).summary()["s_per_step"]


def backbone_folder(model: str, work: Path) -> str:
    """A plain HF folder of the same decoder for sentence-transformers to load (random weights are saved once)."""
    from omegaconf import OmegaConf

    from models import load_backbone, resolve_pretrained

    config = None if model == "tiny" else OmegaConf.load(REPO_ROOT / "configs" / "model" / f"{model}.yaml")
    if config is not None and not config.get("random_config"):
        return resolve_pretrained(config.pretrained)
    random_config = TINY_MODEL if config is None else OmegaConf.to_container(config.random_config)
    backbone, tokenizer = load_backbone(None, random_config=random_config)
    backbone.save_pretrained(work / model)
    tokenizer.save_pretrained(work / model)
    return str(work / model)


def sentence_transformers_timing(
    folder: str,
    dataset,
    batch: int,
    max_length: int,
    steps: int,
    work: Path,
    loss: str = "symmetric",
    bf16: bool = False,
) -> StepTiming:
    """``SentenceTransformerTrainer`` on ``dataset`` (columns ``anchor``, ``positive`` and any
    ``negative_*``), last-token pooling over the decoder folder, on :func:`compute_device`, fp32 (``bf16``:
    its autocast);
    ``loss``: ``symmetric`` (MNSRL) or ``mnrl`` (MultipleNegativesRankingLoss)."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.base.modules.transformer import TRANSFORMER_TASK_DEFAULTS
    from sentence_transformers.losses import MultipleNegativesRankingLoss, MultipleNegativesSymmetricRankingLoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from sentence_transformers.training_args import SentenceTransformerTrainingArguments
    from transformers import TrainerCallback

    # sentence-transformers 6 renders every text through a tokenizer's chat template when it has one
    # (SmolLM2's adds a ~20-token system prompt, so at 32 tokens the text itself is mostly cut off):
    # pin the plain text modality so both trainers see the same tokens.
    text_modality, output_name = TRANSFORMER_TASK_DEFAULTS["feature-extraction"]
    transformer = Transformer(
        folder, max_seq_length=max_length, modality_config={"text": dict(text_modality["text"])},
        module_output_name=output_name,
    )  # fmt: skip
    if transformer.tokenizer.pad_token is None:
        transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
    pooling = Pooling(transformer.get_word_embedding_dimension(), pooling_mode="lasttoken")
    device = compute_device()
    model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device=device)
    counter = TokenCounter()
    counter.install_on_sentence_transformers(transformer.auto_model)
    step_ends: list[float] = []

    class StepTimer(TrainerCallback):
        """Wall time from one step's end to the next: like ours, it includes fetching and collating the
        batch, which the Trainer does before ``on_step_begin``."""

        def on_step_begin(self, args, state, control, **kwargs):
            if not step_ends:
                step_ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)  # a GPU step is only over when its kernels are
            step_ends.append(time.perf_counter())

    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(work), per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-4,
        warmup_steps=0, report_to="none", save_strategy="no", logging_steps=steps, use_cpu=device == "cpu", seed=0,
        dataloader_drop_last=True, bf16=bf16,
    )  # fmt: skip
    trainer = SentenceTransformerTrainer(
        model=model, args=arguments, train_dataset=dataset,
        loss=(MultipleNegativesSymmetricRankingLoss if loss == "symmetric" else MultipleNegativesRankingLoss)(model),
        callbacks=[StepTimer()],
    )  # fmt: skip
    trainer.train()
    durations = [end - start for start, end in itertools.pairwise(step_ends)]
    return counter.timing(durations, steps)


def sentence_transformers_seconds(
    folder: str, dataset, batch: int, max_length: int, steps: int, work: Path, loss: str = "symmetric"
) -> float:
    """Median s/step (after the first) of :func:`sentence_transformers_timing`."""
    return sentence_transformers_timing(folder, dataset, batch, max_length, steps, work, loss).summary()["s_per_step"]


def pairs_dataset(data: Path):
    from datasets import Dataset

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    return Dataset.from_dict({"anchor": [r["x"] for r in rows], "positive": [r["y"] for r in rows]})


PACK, PACK_64 = ("trainer.packing=true",), ("trainer.packing=true", "trainer.pack_length=64")
BF16, COMPILE = ("trainer.mixed_precision=bf16",), ("trainer.compile=true",)
TRAINERS = {  # name -> (ours?, precision, our extra overrides)
    "st": (False, "fp32", ()),
    "ours": (True, "fp32", ()),
    "ours-packed": (True, "fp32", PACK),
    "ours-packed-64": (True, "fp32", PACK_64),
    "ours-packed-compile": (True, "fp32", (*PACK, *COMPILE)),
    "ours-compile": (True, "fp32", COMPILE),
    "st-bf16": (False, "bf16", ()),
    "ours-bf16": (True, "bf16", BF16),
    "ours-packed-bf16": (True, "bf16", (*PACK, *BF16)),
    "ours-packed-bf16-compile": (True, "bf16", (*PACK, *BF16, *COMPILE)),
    "ours-packed-64-bf16": (True, "bf16", (*PACK_64, *BF16)),
}


def measure_one(trainer: str, args: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    """One trainer's run in this process: its step timing summary and its non-embedding parameter count."""
    ours, precision, extra = TRAINERS[trainer]
    if ours:
        timing = ours_timing(
            args.model, ["data=jsonl", f"data.path={data}"], args.batch, args.max_length, args.steps, work, extra
        )
    else:
        timing = sentence_transformers_timing(
            backbone_folder(args.model, work), pairs_dataset(data), args.batch, args.max_length, args.steps, work,
            bf16=precision == "bf16",
        )  # fmt: skip
    return {"trainer": trainer, "precision": precision, **timing.summary(), "seconds": timing.seconds}


def matmul_peak_gflops(dtype_name: str, size: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of a warm ``size`` x ``size`` matmul in this process's threads (the first
    call of a dtype builds oneDNN's kernels, so one warm-up product comes first). Where bf16 is only
    emulated (:func:`models.precision.native_bf16`) it is timed at 512 x 512, which says as much in a
    fraction of a second."""
    import torch

    from models.precision import native_bf16

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    if dtype_name == "bf16" and not native_bf16():
        size, repeats = 512, 1
    device = compute_device()

    def seconds(n: int) -> float:
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        synchronize(device)
        started = time.perf_counter()
        a @ b
        synchronize(device)
        return time.perf_counter() - started

    seconds(size)  # warm-up: kernel selection and first-touch memory
    return 2 * size**3 / min(seconds(size) for _ in range(repeats)) / 1e9


def compute_device() -> str:
    """``cuda`` where a GPU is visible (both trainers and the matmul peak run there), else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def non_embedding_parameters(model: str) -> int:
    """Parameters of the decoder outside its token (and position) embedding tables: what a token's
    forward and backward multiply through (~6 FLOPs per parameter per token)."""
    import torch

    from models import load_backbone

    backbone, _ = load_backbone(backbone_folder(model, Path(tempfile.mkdtemp(prefix="cpt-params-"))))
    tables = [m for m in backbone.modules() if isinstance(m, torch.nn.Embedding)]
    embeddings = {id(p) for table in tables for p in table.parameters()}
    return sum(p.numel() for p in backbone.parameters() if id(p) not in embeddings)


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries that over from
    the parent across fork+exec, so a child of a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_one(batch: int, chunk: int | None, max_length: int, data: Path) -> None:
    """One training step in this process; print peak RSS (MiB) and seconds as JSON."""
    from train.contrastive import train

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


def run_child(trainer: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One trainer in a fresh process (no state carried between trainers or rounds)."""
    command = [sys.executable, __file__, "--measure-one", trainer, "--model", args.model, "--batch", str(args.batch),
               "--max-length", str(args.max_length), "--steps", str(args.steps), "--data-dir", str(args.data_dir),
               "--work", str(work)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{trainer} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def throughput_table(args: argparse.Namespace, scratch: Path) -> None:
    """Every trainer once per round, in rotating order; the table of medians, spreads and ratios."""
    import torch

    from models.precision import native_bf16

    print(f"# load average before: {load_average()}")
    peaks = {name: matmul_peak_gflops(name) for name in ("fp32", "bf16")}
    print(f"# matmul peak (2048x2048, {torch.get_num_threads()} threads): "
          f"fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")  # fmt: skip
    trainers = list(args.trainers)
    if not native_bf16() and not args.force_bf16:
        skipped = [t for t in trainers if TRAINERS[t][1] == "bf16"]
        if skipped:
            print(f"# skipped {skipped}: this machine has no native bf16 (models.precision.native_bf16; bf16 "
                  f"matmuls measured {peaks['fp32'] / peaks['bf16']:.0f}x slower than fp32); --force-bf16 runs "
                  "them anyway")  # fmt: skip
        trainers = [t for t in trainers if t not in skipped]
    if not trainers:
        print("# nothing left to measure: every selected trainer was skipped (see above)")
        return
    parameters = non_embedding_parameters(args.model)
    results: dict[str, list[dict[str, Any]]] = {t: [] for t in trainers}
    for round_ in range(args.rounds):
        order = trainers[round_ % len(trainers) :] + trainers[: round_ % len(trainers)]
        for trainer in order:
            out = run_child(trainer, args, scratch / f"{trainer}-{round_}")
            results[trainer].append(out)
            print(f"# round {round_ + 1} {trainer}: {out['s_per_step']:.2f} s/step, "
                  f"{out['real_tokens_per_s']:.0f} real tokens/s", flush=True)  # fmt: skip
    peaks_after = {name: matmul_peak_gflops(name) for name in ("fp32", "bf16")}
    setting = (f"{args.model}, batch {args.batch} pairs, {args.max_length} tokens per side, full fine-tuning, "
               f"{args.rounds} rounds x {args.steps} steps (first one warm-up), rotating order")  # fmt: skip
    report = {"setting": setting, "batch": args.batch, "peaks": peaks, "peaks_after": peaks_after,
              "parameters": parameters, "runs": results}  # fmt: skip
    print_throughput_table(report)
    print(f"\n# load average after: {load_average()}")
    if args.report:
        args.report.write_text(json.dumps(report, indent=2))


RATES = ("s_per_step", "warmup_s", "real_tokens_per_s", "text_tokens_per_s", "computed_tokens_per_s", "real_fraction")


def print_throughput_table(report: dict[str, Any]) -> None:
    """The table of one run's figures (what ``--report`` wrote; ``--table-from`` prints it again)."""
    peaks, parameters, results = report["peaks"], report["parameters"], report["runs"]
    print(f"\n## Training throughput: {report['setting']}\n")
    print(f"{parameters / 1e6:.1f}M non-embedding parameters; FLOP/s counted as 6 x parameters x real tokens/s "
          "(attention left out) against the matmul peak of the same precision measured in this run "
          f"(fp32 {peaks['fp32']:.1f} / bf16 {peaks['bf16']:.1f} GFLOP/s before; "
          f"{report['peaks_after']['fp32']:.1f} / {report['peaks_after']['bf16']:.1f} after). Real tokens "
          "include our two delimiters per row, text tokens do not (sentence-transformers adds none): text "
          "tokens/s is the like-for-like rate.\n")  # fmt: skip
    print(
        "| trainer | precision | s/step (median; min-max over rounds) | first step s | pairs/s | real tokens/s | "
        "text tokens/s | computed tokens/s | real / computed | % of peak (real tokens) | "
        "vs sentence-transformers: pairs/s | real tokens/s | text tokens/s |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    medians: dict[str, dict[str, float]] = {}
    for trainer, runs in results.items():
        medians[trainer] = {
            key: statistics.median(run[key] for run in runs)
            for key in RATES
            if key in runs[0]  # text tokens: not in reports written before they were counted
        }
    for trainer, runs in results.items():
        m, precision = medians[trainer], TRAINERS[trainer][1]
        per_round = [run["s_per_step"] for run in runs]
        peer = medians.get("st" if precision == "fp32" else "st-bf16")
        pairs_ratio = f"{peer['s_per_step'] / m['s_per_step']:.2f}" if peer else "-"
        tokens_ratio = f"{m['real_tokens_per_s'] / peer['real_tokens_per_s']:.2f}" if peer else "-"
        text = m.get("text_tokens_per_s")
        text_rate = "-" if text is None else f"{text:.0f}"
        text_ratio = f"{text / peer['text_tokens_per_s']:.2f}" if peer and text is not None else "-"
        peak_share = 6 * parameters * m["real_tokens_per_s"] / (peaks[precision] * 1e9)
        warmup = f"{m['warmup_s']:.1f}" if "warmup_s" in m else "-"
        print(f"| {trainer} | {precision} | {m['s_per_step']:.2f} ({min(per_round):.2f}-{max(per_round):.2f}) | "
              f"{warmup} | {report['batch'] / m['s_per_step']:.2f} | {m['real_tokens_per_s']:.0f} | {text_rate} | "
              f"{m['computed_tokens_per_s']:.0f} | {m['real_fraction']:.2f} | {100 * peak_share:.0f}% | "
              f"{pairs_ratio} | {tokens_ratio} | {text_ratio} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a configs/model option, or 'tiny'")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="steps per trainer and round; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trainers", nargs="+", default=["st", "ours", "ours-packed"], choices=sorted(TRAINERS))
    parser.add_argument("--force-bf16", action="store_true", help="run bf16 trainers even where bf16 is emulated")
    parser.add_argument("--report", type=Path, help="also write every run's figures to this JSON file")
    parser.add_argument("--memory-batches", type=int, nargs="*", default=[64, 256, 1024])
    parser.add_argument("--memory-chunk", type=int, default=32)
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("CPT_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--table-from", type=Path, help="print the throughput table of an earlier --report and exit")
    parser.add_argument("--memory-one", nargs=2, type=int, metavar=("BATCH", "CHUNK"), help=argparse.SUPPRESS)
    parser.add_argument("--measure-one", choices=sorted(TRAINERS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table_from:
        report = json.loads(args.table_from.read_text())
        report.setdefault("batch", args.batch)  # reports written before the key existed
        print_throughput_table(report)
        return

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        data = scratch / "pairs.jsonl"
        count = write_pairs(data, args.data_dir)
        if args.memory_one:
            batch, chunk = args.memory_one
            memory_one(batch, chunk or None, args.max_length, data)
            return
        if args.measure_one:
            print(json.dumps(measure_one(args.measure_one, args, data, args.work)))
            return
        import torch

        print(f"# {count} training pairs; torch threads {torch.get_num_threads()}; {os.cpu_count()} CPUs")
        if not args.skip_throughput:
            throughput_table(args, scratch)
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
