"""Policies: prompts and generation backends (transformers, vLLM, OpenAI-compatible)."""

from __future__ import annotations

from tratree.errors import UserError
from tratree.policy.base import Backend, GenerationRequest
from tratree.spec.experiment import PolicySpec

__all__ = ["Backend", "BackendUnavailable", "GenerationRequest", "backend_problem", "make_backend"]


class BackendUnavailable(UserError, RuntimeError):
    """The spec's generation backend cannot run here; one line saying what to do."""


def backend_problem(spec: PolicySpec) -> str | None:
    """Why the spec's backend cannot run on this machine, or None."""
    import importlib.util

    if spec.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        return ("policy.backend vllm needs vLLM, which is not installed here (a GPU machine: pip install vllm); "
                "on a CPU, use backend: transformers")
    return None


def make_backend(spec: PolicySpec, model: str, dtype: str = "auto") -> Backend:
    """The spec's backend for a model directory (or, for ``openai``, a served model name)."""
    if problem := backend_problem(spec):
        raise BackendUnavailable(problem)
    if spec.backend == "openai":
        from tratree.policy.openai_backend import OpenAIBackend

        assert spec.endpoint is not None
        return OpenAIBackend(spec.endpoint, model, spec.max_new_tokens, concurrency=spec.batch_size)
    if spec.backend == "vllm":
        from tratree.models.loading import adapter_base
        from tratree.policy.vllm_backend import VLLMBackend

        base = adapter_base(model)
        return VLLMBackend(
            base or model,
            spec.max_new_tokens,
            lora_path=model if base else None,
            tensor_parallel_size=spec.tensor_parallel_size,
            gpu_memory_utilization=spec.gpu_memory_utilization,
        )
    from tratree.policy.transformers_backend import TransformersBackend

    return TransformersBackend.from_pretrained(model, spec.max_new_tokens, spec.batch_size, dtype)
