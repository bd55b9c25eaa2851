"""What a checkpoint was trained on: its training sets, read back from its resolved ``train_config.yaml``.

Every checkpoint holds the resolved training config; its ``data`` section names the loader of each
training set (``configs/data/*.yaml``). :func:`training_sets` turns it into one
:class:`TrainingSet` per leaf set (a mixture's members one by one) with the manifest that
describes it where one exists: ``DATA_DIR/NAME/manifest.json`` of a ``pairdata build`` set, the
``manifest.json`` of a mining run, one beside local files. A set whose manifest cannot be found is
reported with ``manifest_status: "missing"`` and a reason, never dropped, so results and audits
say "unknown" rather than implying a clean record.

Readers: ``eval`` (mteb's ``model_meta.json``: ``training_datasets``), ``pairdata audit`` and
``serve.export``'s model card.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RUN_CONFIG = "train_config.yaml"  # written into every checkpoint by train/checkpoint.py
LOADERS = {
    "pairdata.trainsets.built": "built",
    "pairdata.mining.load_mined": "mined",
    "pairdata.trainsets.load_hf": "hf",
    "pairdata.trainsets.load_files": "files",
    "pairdata.trainsets.from_pairs": "pairs",
}
MIXTURE = "pairdata.trainsets.mixture"
# MTEB tasks whose *training* split an in-memory pair builder reads (mteb's ModelMeta.training_datasets
# lists such tasks, so the leaderboard can tell zero-shot results apart).
PAIR_BUILDER_MTEB_TASKS = {"pairdata.paraphrase.senteval_paraphrase_pairs": ("STSBenchmark",)}


@dataclass
class TrainingSet:
    """One training set of a checkpoint.

    ``kind``: ``built``, ``mined``, ``hf``, ``files``, ``pairs`` (built in memory from files) or
    ``unknown`` (a loader this module does not know). ``manifest_status``: ``found``, ``missing``
    (``reason`` says why) or ``not-applicable`` (a hub set, named by id and revision).
    """

    name: str
    kind: str
    location: str | None
    manifest: str | None
    manifest_status: str
    config: dict[str, Any]
    mteb_tasks: list[str] = field(default_factory=list)
    reason: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_folder(path: str | Path) -> Path:
    """``path`` itself when it holds ``train_config.yaml``, else the newest complete checkpoint of a run folder.

    Raises:
        FileNotFoundError: neither (the message says what was looked for).
    """
    path = Path(path).expanduser()
    if (path / RUN_CONFIG).is_file():
        return path
    steps = sorted(p for p in (path / "checkpoints").glob("step-*") if (p / RUN_CONFIG).is_file())
    if steps:
        return steps[-1]
    raise FileNotFoundError(
        f"{path} is neither a checkpoint (no {RUN_CONFIG}) nor a training run with checkpoints/step-*/{RUN_CONFIG}"
    )


def read_train_config(checkpoint: str | Path) -> dict[str, Any]:
    """The resolved training config stored in ``checkpoint`` (a dict)."""
    from omegaconf import OmegaConf

    path = Path(checkpoint) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the checkpoint does not say what it was trained on")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)  # type: ignore[return-value]


def iter_leaf_configs(data: Mapping[str, Any], label: str = "data") -> Iterator[tuple[str, dict[str, Any]]]:
    """``(name, loader config)`` for every leaf set of a ``data`` config (mixture members one by one)."""
    if data.get("_target_") == MIXTURE:
        for name, member in (data.get("datasets") or {}).items():
            yield from iter_leaf_configs(member, str(name))
        return
    yield label, dict(data)


def training_sets(train_config: Mapping[str, Any]) -> list[TrainingSet]:
    """One :class:`TrainingSet` per leaf training set of a resolved training config."""
    data = train_config.get("data")
    if not isinstance(data, Mapping):
        return [TrainingSet("data", "unknown", None, None, "missing", {}, reason="the config has no data section")]
    return [_describe(label, config) for label, config in iter_leaf_configs(data)]


def _describe(label: str, config: dict[str, Any]) -> TrainingSet:
    target = str(config.get("_target_", ""))
    kind = LOADERS.get(target, "unknown")
    if kind == "built":
        from pairdata.loading import default_data_dir
        from pairdata.store import MANIFEST, dataset_dir

        root = Path(config["data_dir"]).expanduser() if config.get("data_dir") else default_data_dir()
        folder = dataset_dir(root, config["name"])
        return _with_manifest(config["name"], kind, str(folder), folder / MANIFEST, config)
    if kind == "mined":
        folder = Path(str(config["path"])).expanduser()
        return _with_manifest(folder.name or label, kind, str(folder), folder / "manifest.json", config)
    if kind == "files":
        paths = config["path"] if isinstance(config["path"], list) else [config["path"]]
        first = Path(str(paths[0])).expanduser()
        folder = first if first.is_dir() else first.parent
        return _with_manifest(label, kind, ", ".join(map(str, paths)), folder / "manifest.json", config)
    if kind == "hf":
        name = str(config["name"])
        local = Path(name).expanduser()
        if local.is_dir():
            return _with_manifest(local.name, kind, str(local), local / "manifest.json", config)
        revision = config.get("revision") or "unpinned (the hub's default branch when trained)"
        return TrainingSet(name, kind, f"hf://{name}@{revision}", None, "not-applicable", config)
    if kind == "pairs":
        builder = config.get("pairs") or {}
        builder_target = str(builder.get("_target_", ""))
        location = builder.get("data_root")
        return TrainingSet(
            str(config.get("name", label)),
            kind,
            None if location is None else str(location),
            None,
            "not-applicable",
            config,
            mteb_tasks=list(PAIR_BUILDER_MTEB_TASKS.get(builder_target, ())),
            reason=f"built in memory by {builder_target or 'an unknown builder'}; no manifest",
        )
    return TrainingSet(label, "unknown", None, None, "missing", config, reason=f"unknown loader {target!r}")


def _with_manifest(name: str, kind: str, location: str, manifest: Path, config: dict[str, Any]) -> TrainingSet:
    if not manifest.is_file():
        return TrainingSet(name, kind, location, str(manifest), "missing", config, reason=f"{manifest} not found")
    content = json.loads(manifest.read_text(encoding="utf-8"))
    summary = {key: content[key] for key in ("kind", "created_utc", "counts", "source", "encoder") if key in content}
    return TrainingSet(name, kind, location, str(manifest), "found", config, summary=summary)


def mteb_training_datasets(sets: list[TrainingSet]) -> set[str]:
    """mteb's ``training_datasets``: the MTEB tasks trained on, then every set by ``cpt-embeddings/<name>``."""
    names = {task for training_set in sets for task in training_set.mteb_tasks}
    return names | {f"cpt-embeddings/{training_set.name}" for training_set in sets}
