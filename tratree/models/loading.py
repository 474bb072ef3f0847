"""Loading and saving causal LMs: Hugging Face ids, local directories, s3:// URIs, LoRA adapters."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tratree.store.atomic import directory_written, follow_umask

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


# For base models without a chat template (Llama-2-7b-hf, the paper's): plain turns, each reply
# closed by the end-of-sequence token, so replies end where generation stops.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token + '\\n' }}"
    "{% else %}{{ 'Human: ' + message['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant: ' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> Any:
    """Give a tokenizer without a chat template the plain one; others are left as they are."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    return tokenizer


def _quiet() -> None:
    # tratree shows its own progress; transformers' per-shard bars would interleave with it
    from transformers.utils import logging

    logging.disable_progress_bar()


def adapter_base(path: str) -> str | None:
    """The base model of a saved LoRA adapter directory; None when ``path`` is a full model."""
    cfg = Path(path) / "adapter_config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("base_model_name_or_path")


def resolve(ref: str, cache_dir: str | None = None) -> str:
    """A local directory or hub id for a model reference; s3:// URIs are downloaded to a cache.

    A cached copy is used only while it is intact and current: the prefix's listing (names, sizes,
    ETags) must match the one it was fetched from, and every file its recorded size and sha256
    (rehashed when its modification time changed). Otherwise it is fetched again.
    """
    if not ref.startswith("s3://"):
        return ref
    from tratree.store.artifacts import list_prefix

    cache = Path(cache_dir or os.environ.get("TRATREE_MODEL_CACHE", Path.home() / ".cache" / "tratree" / "models"))
    target = cache / ref.removeprefix("s3://").replace("/", "__")
    listing = list_prefix(ref)
    if _cached_copy_intact(target, listing):
        return str(target)
    _fetch(ref, target, listing)
    return str(target)


_RECORD = ".complete"


def _cached_copy_intact(target: Path, listing: dict[str, dict[str, Any]]) -> bool:
    from tratree.store.artifacts import sha256_file

    try:
        record = json.loads((target / _RECORD).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("objects") != listing:
        return False
    for rel, info in record.get("files", {}).items():
        path = target / rel
        try:
            st = path.stat()
        except OSError:
            return False
        if st.st_size != info["size"]:
            return False
        if st.st_mtime_ns != info["mtime_ns"] and sha256_file(path) != info["sha256"]:
            return False
    return set(record.get("files", {})) == set(listing)


def _fetch(ref: str, target: Path, listing: dict[str, dict[str, Any]]) -> None:
    """Download into a temp directory beside ``target``, record what was fetched, then swap it in."""
    from tratree.store.artifacts import StoreError, download_prefix, sha256_file

    with directory_written(target) as tmp:
        download_prefix(ref, tmp, list(listing))
        files = {}
        for rel, info in listing.items():
            st = (tmp / rel).stat()
            if st.st_size != info["size"]:
                raise StoreError(f"{ref}/{rel}: downloaded {st.st_size} bytes, the store lists {info['size']}")
            files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(tmp / rel)}
        (tmp / _RECORD).write_text(json.dumps({"objects": listing, "files": files}, sort_keys=True))


def load_causal_lm(ref: str, dtype: str = "auto", trainable: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) for a reference; an adapter directory loads onto its base model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _quiet()
    path = resolve(ref)
    torch_dtype = getattr(torch, _DTYPES[dtype]) if dtype in _DTYPES else ("auto" if dtype == "auto" else None)
    base = adapter_base(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(base or path, dtype=torch_dtype)
        if base:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, path, is_trainable=trainable)
        tokenizer = AutoTokenizer.from_pretrained(
            path if (Path(path) / "tokenizer_config.json").exists() else base or path)
    except OSError as err:  # not a model, not on the hub, no network: transformers says so at length
        from tratree.models.refs import ModelUnavailable

        detail = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise ModelUnavailable(f"model {ref!r} cannot be loaded: {detail}") from None
    return model, ensure_chat_template(tokenizer)


def save_model(model: Any, tokenizer: Any, out_dir: str | Path, merge_lora: bool = True) -> Path:
    """Save as safetensors with the tokenizer beside; a LoRA model is merged unless told not to.

    Written to a temp directory and renamed into place, so a directory that exists is complete.
    """
    _quiet()
    out = Path(out_dir)
    with directory_written(out) as tmp:
        if merge_lora and hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        follow_umask(tmp)
    return out
