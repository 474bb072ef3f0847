"""Generation with Hugging Face transformers ``generate``: CPU or GPU, batched across episodes."""

from __future__ import annotations

from typing import Any

from transformers import LogitsProcessor, LogitsProcessorList

from tratree.policy.base import GenerationRequest, cut_reply
from tratree.records.prompts import fit


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
        self.generated_tokens = 0  # non-padding tokens generated so far (throughput reports)

    @classmethod
    def from_pretrained(cls, path: str, max_new_tokens: int = 128, batch_size: int = 16, dtype: str = "auto") -> TransformersBackend:
        import torch

        from tratree.models.loading import load_causal_lm

        model, tokenizer = load_causal_lm(path, dtype=dtype)
        if torch.cuda.is_available():  # loaded on the CPU; a GPU Pod generates on its GPU
            model = model.to("cuda")
        return cls(model, tokenizer, max_new_tokens, batch_size)

    def _prompt(self, messages: list[dict[str, str]]) -> str:
        def length(msgs: list[dict[str, str]]) -> int:
            ids = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
            return len(ids["input_ids"])

        return self.tokenizer.apply_chat_template(
            fit(messages, length, self.max_prompt_tokens), add_generation_prompt=True, tokenize=False
        )

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        out: list[str] = [""] * len(requests)
        prompts = [self._prompt(r.messages) for r in requests]
        # similar lengths together: less padding in each batch
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            replies = self._generate([prompts[i] for i in chunk], [requests[i] for i in chunk])
            for i, reply in zip(chunk, replies, strict=True):
                out[i] = reply
        return out

    def _generate(self, prompts: list[str], requests: list[GenerationRequest]) -> list[str]:
        torch = self.torch
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                             truncation=True, max_length=self.max_prompt_tokens)
        enc = {k: v.to(self.model.device) for k, v in enc.items()}
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "pad_token_id": self.tokenizer.pad_token_id,
                                  "eos_token_id": self.tokenizer.eos_token_id, "top_k": None}
        if all(r.temperature == 0 for r in requests):
            kwargs.update(do_sample=False, temperature=None, top_p=None)
        else:
            # one call for the whole batch, each row with its own temperature and top-p
            kwargs.update(do_sample=True, temperature=None, top_p=None,
                          logits_processor=LogitsProcessorList([PerRowSampling(requests, self.model.device)]))
        torch.manual_seed(requests[0].seed)
        with torch.inference_mode():
            generated = self.model.generate(**enc, **kwargs)
        new = generated[:, enc["input_ids"].shape[1] :]
        self.generated_tokens += int((new != self.tokenizer.pad_token_id).sum())
        return [cut_reply(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def close(self) -> None:
        self.model = None


class PerRowSampling(LogitsProcessor):
    """Temperature and nucleus (top-p) sampling with settings and a random stream per batch row.

    Each row draws its token from its own generator, seeded by its request's seed and the token
    position, and only the drawn token is left possible: an episode's reply then does not depend
    on which other episodes share its batch, so a resumed run reproduces an uninterrupted one.
    Temperature 0 rows are greedy.
    """

    def __init__(self, requests: list[GenerationRequest], device: Any) -> None:
        import torch

        self.seeds = [r.seed for r in requests]
        self.temperature = torch.tensor([r.temperature for r in requests], device=device)
        self.top_p = torch.tensor([r.top_p if r.temperature > 0 else 1.0 for r in requests], device=device)
        self.greedy = self.temperature == 0
        self.step = 0

    def filtered(self, scores: Any) -> Any:
        """Scores after per-row temperature and top-p (greedy rows keep only their argmax)."""
        import torch

        scores = scores / self.temperature.clamp(min=1e-6).unsqueeze(1).to(scores.dtype)
        sorted_scores, index = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        # drop a token once the mass before it already reaches top-p (the top token always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= self.top_p.unsqueeze(1)
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(1, index, sorted_scores)
        if self.greedy.any():
            best = scores.argmax(dim=-1, keepdim=True)
            only_best = torch.full_like(scores, float("-inf")).scatter(1, best, 0.0)
            scores = torch.where(self.greedy.unsqueeze(1), only_best, scores)
        return scores

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        probs = self.filtered(scores.float()).softmax(dim=-1)
        chosen = torch.empty(len(self.seeds), 1, dtype=torch.long, device=scores.device)
        for row, seed in enumerate(self.seeds):
            gen = torch.Generator(device=scores.device).manual_seed(seed * 100_003 + self.step)
            chosen[row, 0] = torch.multinomial(probs[row], 1, generator=gen)
        self.step += 1
        return torch.full_like(scores, float("-inf")).scatter(1, chosen, 0.0)
