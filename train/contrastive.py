"""Entry point: contrastive pre-training of an embedding tower from a pretrained decoder.

Usage (from the repository root):
    accelerate launch train/contrastive.py                                  # offline default
    accelerate launch train/contrastive.py tower=search trainer.steps=200   # Hydra overrides
    accelerate launch train/contrastive.py --multirun trainer.lr=1e-5,3e-5
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 \\
        train/contrastive.py hydra.run.dir=runs/two-procs             # 2 CPU processes (gloo)

Configuration lives in ``configs/train.yaml`` and its groups (model, tower, data, trainer, logging).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

if __package__ in (None, ""):  # run as a script: make the repository importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train.loop import train  # noqa: E402

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says, writing into Hydra's output folder; return final metrics."""
    from hydra.core.hydra_config import HydraConfig

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    return train(cfg, output_dir)


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    run(cfg)


if __name__ == "__main__":
    main()
