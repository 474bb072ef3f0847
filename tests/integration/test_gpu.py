"""The GPU paths, on a CUDA machine: bf16 SFT and DPO, generation on the GPU, the vLLM engine.

Skipped where no CUDA GPU is visible (this project's CI has none); they need no Java and no
environment, only synthetic episodes, so they run on a bare GPU machine with the Python packages.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU; none here", allow_module_level=True)

from tratree.models.tiny import build_model, corpus, train_tokenizer  # noqa: E402
from tratree.policy.base import GenerationRequest  # noqa: E402
from tratree.policy.transformers_backend import TransformersBackend  # noqa: E402
from tratree.records.formats import Pair, Step, Trajectory  # noqa: E402
from tratree.records.prompts import PROMPTS, conversation  # noqa: E402
from tratree.records.react import parse_reply  # noqa: E402
from tratree.spec.experiment import DPOTrainingSpec, TrainingSpec  # noqa: E402
from tratree.train.dpo import train_dpo  # noqa: E402
from tratree.train.setup import common_args  # noqa: E402
from tratree.train.sft import train_sft  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ITEMS = ["apple", "carrot", "potato", "onion", "pepper", "lettuce", "tomato", "banana"]
ENV = "textworldexpress"


def episode(k: int) -> Trajectory:
    """A two-step cooking episode whose actions are read off its observations."""
    item = ITEMS[k % len(ITEMS)]
    steps = [Step(observation=f"You are in the kitchen. You see a {item} and a knife.", thought=f"I should take {item}.",
                  action=f"take {item}"),
             Step(observation=f"You take the {item}.", thought=f"I should slice {item}.", action=f"slice {item}")]
    return Trajectory(task_id=f"cookingworld/train/{k}", instruction=f"Slice the {item}.", steps=steps,
                      final_observation=f"You slice the {item}. You won!", score=1.0, success=True)


def taken(backend, test: Trajectory) -> bool:
    """Whether the greedy first reply on ``test`` is a well-formed 'take <item>' (the format SFT taught)."""
    messages = conversation(PROMPTS[ENV], test.instruction, [], test.steps[0].observation)
    thought, action = parse_reply(backend.generate([GenerationRequest(messages, 0.0, 1.0, 1)])[0])
    return bool(thought) and action in {f"take {item}" for item in ITEMS}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(tokenizer, SFT result, saved weak model path) of a bf16 SFT on the GPU."""
    trajs = [episode(k) for k in range(16)]
    tok = train_tokenizer(corpus(ENV, trajs))
    spec = TrainingSpec(epochs=30, learning_rate=5e-3, batch_size=8, micro_batch_size=8, max_length=512,
                        warmup_ratio=0.05)
    out = tmp_path_factory.mktemp("gpu") / "weak"
    result = train_sft(build_model("weak", tok, seed=0), tok, trajs, ENV, spec, out)
    return tok, result, out


def test_training_on_the_gpu_is_bf16_and_learns(trained, tmp_path):
    _, result, _ = trained
    args = common_args(TrainingSpec(), tmp_path, 0)
    assert args["bf16"] is True and args["dataloader_pin_memory"] is True
    assert result["loss_last"] < result["loss_first"] / 10, result["losses"]


def test_the_transformers_backend_generates_on_the_gpu_reproducibly(trained):
    _, _, path = trained
    backend = TransformersBackend.from_pretrained(str(path), max_new_tokens=24)
    assert backend.model.device.type == "cuda"
    assert taken(backend, episode(3)), "greedy reply is not a ReAct 'take <item>'"
    messages = conversation(PROMPTS[ENV], episode(3).instruction, [], episode(3).steps[0].observation)
    sampled = [GenerationRequest(messages, 1.0, 0.95, seed) for seed in range(4)]
    assert backend.generate(sampled) == backend.generate(list(reversed(sampled)))[::-1]


def test_dpo_on_the_gpu_raises_the_chosen_margin(trained, tmp_path):
    tok, _, path = trained
    pairs = [Pair(task_id=f"t{k}", instruction=e.instruction, prefix=[], node=0, chosen_value=1.0, rejected_value=0.0,
                  chosen=e.steps, rejected=[Step(observation=e.steps[0].observation, thought="I should eat knife.",
                                                 action="eat knife")])
             for k, e in enumerate(episode(k) for k in range(8))]
    spec = DPOTrainingSpec(epochs=4, learning_rate=1e-3, batch_size=8, micro_batch_size=8, max_length=512, beta=0.1,
                           warmup_ratio=0.0)
    from tratree.models.loading import load_causal_lm

    weak, _ = load_causal_lm(str(path))
    result = train_dpo(build_model("strong", tok, seed=1), tok, pairs, ENV, spec, tmp_path / "dpo", ref_model=weak,
                       ref_tokenizer=tok)
    assert result["steps"] == 4
    assert result["margins"][-1] > result["margins"][0]


def test_the_vllm_engine_serves_the_trained_model(trained):
    pytest.importorskip("vllm", reason="vLLM is not installed (GPU-only; runs on the cluster's explorer image)")
    from tratree.policy.vllm_backend import VLLMBackend

    _, _, path = trained
    backend = VLLMBackend(str(path), max_new_tokens=24, gpu_memory_utilization=0.3)
    assert taken(backend, episode(5)), "greedy reply is not a ReAct 'take <item>'"
    messages = conversation(PROMPTS[ENV], episode(5).instruction, [], episode(5).steps[0].observation)
    sampled = [GenerationRequest(messages, 1.0, 0.95, seed) for seed in range(4)]
    assert backend.generate(sampled) == backend.generate(sampled)
    assert all("Observation:" not in reply for reply in backend.generate(sampled))
