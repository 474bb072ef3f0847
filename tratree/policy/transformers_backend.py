"""Generation with Hugging Face transformers ``generate``: CPU or GPU, batched across episodes."""

from __future__ import annotations

from itertools import groupby
from typing import Any

from tratree.policy.base import GenerationRequest, cut_reply
from tratree.policy.prompts import fit


class TransformersBackend:
    """Left-padded batches; requests with the same sampling settings are generated together."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 128, batch_size: int = 16) -> None:
        import torch

        self.torch = torch
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        limit = getattr(model.config, "max_position_embeddings", None) or 4096
        self.max_prompt_tokens = max(16, limit - max_new_tokens)

    @classmethod
    def from_pretrained(cls, path: str, max_new_tokens: int = 128, batch_size: int = 16, dtype: str = "auto") -> TransformersBackend:
        from tratree.train.models import load_causal_lm

        model, tokenizer = load_causal_lm(path, dtype=dtype)
        return cls(model, tokenizer, max_new_tokens, batch_size)

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        def length(msgs: list[dict[str, str]]) -> int:
            return len(self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True))

        return self.tokenizer.apply_chat_template(
            fit(messages, length, self.max_prompt_tokens), add_generation_prompt=True, tokenize=False
        )

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: (requests[i].temperature, requests[i].top_p))
        for (temperature, top_p), group in groupby(order, key=lambda i: (requests[i].temperature, requests[i].top_p)):
            idx = list(group)
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                replies = self._generate([self._prompt(requests[i].messages) for i in chunk], temperature, top_p, requests[chunk[0]].seed)
                for i, reply in zip(chunk, replies, strict=True):
                    out[i] = reply
        return [r or "" for r in out]

    def _generate(self, prompts: list[str], temperature: float, top_p: float, seed: int) -> list[str]:
        torch = self.torch
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                             truncation=True, max_length=self.max_prompt_tokens)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        sample = temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": self.max_new_tokens,
                                  "pad_token_id": self.tokenizer.pad_token_id,
                                  "eos_token_id": self.tokenizer.eos_token_id}
        if sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        torch.manual_seed(seed)
        with torch.inference_mode():
            generated = self.model.generate(**enc, **kwargs)
        new = generated[:, enc["input_ids"].shape[1] :]
        return [cut_reply(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def close(self) -> None:
        self.model = None
