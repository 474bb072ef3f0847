"""Tiny causal LMs built from config, for CPU runs and tests.

A preset is a Qwen2 architecture at a given size. Its tokenizer is a byte-level BPE trained on
the environment's own text, with a ChatML chat template whose assistant turns are wrapped in
``{% generation %}`` so trainers can score assistant tokens only. Weak and strong presets
built from the same tokenizer can serve as each other's DPO reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tratree.catalog import TINY_PRESETS

VOCAB_SIZE = 4096
MAX_POSITIONS = 4096
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def preset_name(ref: str) -> str | None:
    """``weak`` for ``tiny:weak``; None for any other model reference."""
    if not ref.startswith("tiny:"):
        return None
    name = ref.removeprefix("tiny:")
    if name not in TINY_PRESETS:
        raise ValueError(f"unknown tiny preset {ref!r} (known: {', '.join('tiny:' + p for p in TINY_PRESETS)})")
    return name


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """A byte-level BPE tokenizer trained on ``texts``, with the ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        model_max_length=MAX_POSITIONS,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(preset: str, tokenizer: Any, seed: int = 0) -> Any:
    """A freshly initialised Qwen2 causal LM of the preset's size for ``tokenizer``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
        **TINY_PRESETS[preset],
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def create(preset: str, tokenizer: Any, out_dir: str | Path, seed: int = 0) -> Path:
    """Build a tiny model and save it with its tokenizer (safetensors)."""
    from tratree.models.loading import save_model

    return save_model(build_model(preset, tokenizer, seed), tokenizer, out_dir)


def corpus(env_name: str, trajectories: Iterable[Any]) -> Iterator[str]:
    """Texts to train a tokenizer on: the prompt and every turn of the trajectories' chats."""
    from tratree.records.prompts import PROMPTS, conversation

    yield PROMPTS[env_name]
    for traj in trajectories:
        for message in conversation(PROMPTS[env_name], traj.instruction, traj.steps, traj.final_observation):
            yield message["content"]
