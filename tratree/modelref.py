"""Model references (hub ids, local directories, s3:// URIs, tiny presets), checked as far as this
machine can without loading anything, so a run fails before its first stage, not hours in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Kind = Literal["tiny", "s3", "local", "hub"]
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def kind(ref: str) -> Kind:
    """What a reference names. A path that exists, or one written as a path (/, ./, ../, ~), is local;
    ``org/name`` that is not a directory here is a Hugging Face hub id."""
    if ref.startswith("tiny:"):
        return "tiny"
    if ref.startswith("s3://"):
        return "s3"
    if ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().exists():
        return "local"
    return "hub"


def problem(ref: str) -> str | None:
    """What is wrong with a reference as far as can be seen here; None when nothing is (or nothing
    can be checked: hub ids and s3:// URIs are only reachable at run time)."""
    which = kind(ref)
    if which == "tiny":
        from tratree.train.tiny import preset_name

        try:
            preset_name(ref)
        except ValueError as err:
            return str(err)
        return None
    if which != "local":
        return None
    path = Path(ref).expanduser()
    if not path.exists():
        return f"{ref}: no such directory"
    if not path.is_dir():
        return f"{ref}: not a directory (a model is a directory with config.json)"
    if (path / "adapter_config.json").is_file():
        if not any((path / f).is_file() for f in _ADAPTER_WEIGHTS):
            return f"{ref}: a LoRA adapter without its weights ({' or '.join(_ADAPTER_WEIGHTS)})"
        return None
    if not (path / "config.json").is_file():
        return f"{ref}: not a model directory (no config.json or adapter_config.json)"
    if not any((path / f).is_file() for f in _WEIGHTS):
        return f"{ref}: a model directory without weights ({', '.join(_WEIGHTS)})"
    return None


def unchecked(ref: str) -> str | None:
    """Why a reference cannot be checked on this machine, or None when it was."""
    which = kind(ref)
    if which == "hub":
        return f"{ref}: a Hugging Face hub id, not checked here (it is fetched when a stage loads it)"
    if which == "s3":
        return f"{ref}: an s3:// URI, not checked here (it is fetched when a stage loads it)"
    return None
