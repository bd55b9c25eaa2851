"""Entry point: contrastive pre-training of an embedding tower from a pretrained decoder.

Usage (from the repository root):
    accelerate launch train/contrastive.py                                  # offline default
    accelerate launch train/contrastive.py tower=search trainer.steps=200   # Hydra overrides
    accelerate launch train/contrastive.py --multirun trainer.lr=1e-5,3e-5
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml \\
        train/contrastive.py hydra.run.dir=runs/two-procs                 # 2 CPU processes (gloo)
    accelerate launch --config_file configs/accelerate/fsdp_cpu.yaml \\
        train/contrastive.py hydra.run.dir=runs/fsdp                      # FSDP2 on 2 CPU processes

Configuration lives in ``configs/train.yaml`` and its groups (model, tower, data, trainer, logging).
A run is built once (:mod:`train.build`), then stepped (:mod:`train.loop`).
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

from train.build import build_run  # noqa: E402
from train.launch import LaunchError, release_accelerator_state  # noqa: E402
from train.loop import train_steps  # noqa: E402
from train.settings import ConfigError  # noqa: E402

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Run contrastive training as configured; return the final metrics and checkpoint path.

    Works unchanged on one process or many (``accelerate launch``): negatives are gathered across
    processes by the loss. Can be called again in the same process (Hydra multirun), with other settings.
    """
    run = None
    try:
        run = build_run(cfg, output_dir)
        return train_steps(run)
    finally:
        if run is not None and run.lock is not None:
            run.lock.release()
        release_accelerator_state()


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train as ``cfg`` says, writing into Hydra's output folder; return final metrics."""
    from hydra.core.hydra_config import HydraConfig

    return train(cfg, Path(HydraConfig.get().runtime.output_dir))


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        run(cfg)
    except Exception as error:
        cause = one_line_cause(error)
        if cause is None:
            raise
        print(f"\nerror: {cause}", file=sys.stderr)  # stderr (Hydra logs to stdout), below any progress bar
        sys.exit(2)


def one_line_cause(error: BaseException) -> BaseException | None:
    """The user's mistake behind ``error`` when it is one (a bad config value, launch or data file, whose
    message names the fix), else ``None``: those print as one line, anything else as a traceback."""
    from hydra.errors import InstantiationException

    from pairdata.errors import DataFormatError

    if isinstance(error, InstantiationException) and error.__cause__ is not None:  # raised inside a data loader
        error = error.__cause__
    return error if isinstance(error, (ConfigError, LaunchError, DataFormatError)) else None


if __name__ == "__main__":
    main()
