"""Whether a checkpoint folder is complete and undamaged: the one owner of that question.

A writer that wants its folder trusted calls :func:`write_manifest` after every other file is on
disk (and synced): ``manifest.json`` lists each file's size and xxh3-128 hash. A reader asks
:func:`damage`: nothing (complete), or the first problem found (a file missing, of another size,
or, when ``hashes`` is set, with other bytes). Sizes are checked in one ``stat`` per file, so
listing a run's checkpoints stays cheap; hashes cost a read of the folder (~1 s per GB here) and
are checked on the checkpoint a run resumes from.

Folders written before manifests existed are judged by the files an embedder must hold
(:func:`legacy_damage`): its config, heads, tokenizer and every backbone's (or adapter's) weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_CHUNK = 1 << 22


def file_hash(path: Path) -> str:
    """xxh3-128 of a file's bytes, hex."""
    import xxhash

    digest = xxhash.xxh3_128()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, and the folders themselves, to disk (so a power cut after
    a rename cannot leave the renamed folder with empty or short files)."""
    for root, _, files in os.walk(folder):
        for name in files:
            descriptor = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        fsync_dir(Path(root))


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename inside it, a new file) to disk."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_manifest(folder: Path) -> dict:
    """Record every file under ``folder`` (size and hash) in ``folder/manifest.json``, synced; call last."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "xxh3_128": file_hash(path)}
    manifest = {"format_version": FORMAT_VERSION, "files": files}
    staging = folder / f".{MANIFEST}.tmp"
    with staging.open("w") as file:
        json.dump(manifest, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    staging.replace(folder / MANIFEST)
    fsync_dir(folder)
    return manifest


def damage(folder: Path, hashes: bool = False) -> str | None:
    """``None`` when ``folder`` is complete, else what is wrong with it (one line naming the file)."""
    path = folder / MANIFEST
    if not path.is_file():
        return legacy_damage(folder)
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{path} is unreadable ({error})"
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            return f"{file} is missing"
        size = file.stat().st_size
        if size != expected["size"]:
            return f"{file} holds {size} bytes, the manifest says {expected['size']}"
        if hashes and file_hash(file) != expected["xxh3_128"]:
            return f"{file} differs from the manifest's hash (damaged after it was written)"
    return None


def is_complete(folder: Path, hashes: bool = False) -> bool:
    return folder.is_dir() and damage(folder, hashes) is None


def legacy_damage(folder: Path) -> str | None:
    """The file-presence rule for folders without a manifest (written by earlier versions)."""
    config_path = folder / "embedder_config.json"
    for needed in (config_path, folder / "heads.safetensors", folder / "tokenizer"):
        if not needed.exists():
            return f"{needed} is missing (and {folder} has no {MANIFEST})"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        return f"{config_path} is unreadable ({error})"
    stem = "adapter" if "lora" in config else "backbone"
    names = [stem] if config.get("shared_weights", True) else [f"{stem}-{n}" for n in config.get("sides", {})]
    for name in names:
        if not any((folder / name).glob("*.safetensors")):
            return f"{folder / name} holds no weights (*.safetensors)"
    return None
