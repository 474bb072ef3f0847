"""Model references (hub ids, local directories, s3:// URIs, tiny presets), checked as far as this
machine can without loading anything, so a run fails before its first stage, not hours in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from tratree.errors import UserError

Kind = Literal["tiny", "s3", "local", "hub"]


class ModelUnavailable(UserError, RuntimeError):
    """A model reference that cannot be loaded here; the message is one line naming it."""
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
    """What is wrong with a local model directory as far as can be seen here; None when nothing is, or
    for other references (a ``tiny:`` preset is checked by the spec itself; hub ids and s3:// URIs are
    reachable only at run time, see ``unreachable``)."""
    if kind(ref) != "local":
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


def unreachable(ref: str) -> str | None:
    """Why a hub id or s3:// model cannot be fetched from here (asked over the network, briefly),
    or None when it can, or is already cached, or is not fetched at all."""
    which = kind(ref)
    if which == "s3":
        from tratree.store.artifacts import StoreError, list_prefix

        try:
            list_prefix(ref)
        except StoreError as err:
            return str(err)
        return None
    if which != "hub":
        return None
    import os

    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return None  # in the local Hugging Face cache
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return f"{ref}: not in the Hugging Face cache, and HF_HUB_OFFLINE is set"
    try:
        model_info(ref, timeout=10)
    except GatedRepoError:
        return f"{ref}: a gated model on the Hugging Face hub: set HF_TOKEN (hfTokenSecret on a cluster)"
    except RepositoryNotFoundError:
        return f"{ref}: no such model on the Hugging Face hub (or it is private: set HF_TOKEN)"
    except Exception as err:  # no network, DNS, TLS, proxy: what the user can act on is the same
        detail = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        return (f"{ref}: a Hugging Face hub id, and the hub cannot be reached from here ({detail}); use a local "
                "directory, an s3:// URI, or fill the Hugging Face cache first")
    return None
