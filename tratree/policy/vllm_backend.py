"""Offline batched generation with vLLM (GPU): the whole batch in one ``LLM.chat`` call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tratree.errors import UserError
from tratree.policy.base import STOP_STRINGS, GenerationRequest, cut_reply

# the LoRA ranks vLLM's kernels are built for; its max_lora_rank must be one of them (default 16)
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def max_lora_rank(adapter: str) -> int:
    """The ``max_lora_rank`` vLLM needs to serve the adapter in ``adapter``: its rank, rounded up to one vLLM has."""
    config = Path(adapter) / "adapter_config.json"
    try:
        rank = int(json.loads(config.read_text())["r"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{config}: cannot read the LoRA rank ({err})") from None
    fits = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fits:
        raise UserError(f"{config}: LoRA rank {rank} is above the largest vLLM serves ({VLLM_LORA_RANKS[-1]})")
    return fits[0]


class VLLMBackend:
    """A vLLM engine over a merged model, or a base model plus a LoRA adapter (``LoRARequest``)."""

    def __init__(
        self,
        model: str,
        max_new_tokens: int = 128,
        lora_path: str | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        llm: Any = None,
    ) -> None:
        self.max_new_tokens = max_new_tokens
        self.lora_path = lora_path
        if llm is None:
            from vllm import LLM

            lora = {"enable_lora": True, "max_lora_rank": max_lora_rank(lora_path)} if lora_path else {}
            llm = LLM(
                model=model,
                tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization,
                seed=0,
                **lora,
            )
        self.llm = llm

    def sampling_params(self, request: GenerationRequest) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            temperature=request.temperature,
            top_p=request.top_p if request.temperature > 0 else 1.0,
            max_tokens=self.max_new_tokens,
            seed=request.seed,
            stop=STOP_STRINGS,
        )

    def lora_request(self) -> Any:
        if self.lora_path is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest("tratree-adapter", 1, self.lora_path)

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        if not requests:
            return []
        outputs = self.llm.chat(
            [r.messages for r in requests],
            sampling_params=[self.sampling_params(r) for r in requests],
            use_tqdm=False,
            lora_request=self.lora_request(),
        )
        return [cut_reply(o.outputs[0].text) for o in outputs]

    def close(self) -> None:
        self.llm = None
