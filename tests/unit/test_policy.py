"""Generation backends up to their library boundary, and the episode chat layout."""

from __future__ import annotations

import json
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest

from tratree.policy.base import GenerationRequest, cut_reply
from tratree.policy.openai_backend import OpenAIBackend
from tratree.policy.vllm_backend import VLLMBackend
from tratree.records.formats import Step
from tratree.records.prompts import PROMPTS, conversation, fit

MESSAGES = [{"role": "user", "content": "go"}]


def test_conversation_layout_follows_eto():
    steps = [Step(observation="You are in the kitchen.", thought="Read it.", action="read cookbook"),
             Step(observation="The recipe says ...", thought="", action="take knife")]
    chat = conversation(PROMPTS["textworldexpress"], "You are hungry!", steps, "You take the knife.")
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert chat[1]["content"] == "OK"
    assert chat[2]["content"] == "You are hungry!\nYou are in the kitchen."
    assert chat[3]["content"] == "Thought: Read it.\nAction: read cookbook"
    assert chat[4]["content"] == "Observation: The recipe says ..."
    assert chat[5]["content"] == "Action: take knife"
    assert chat[6]["content"] == "Observation: You take the knife."
    first = conversation("P", "task", [], "You are in the kitchen.")
    assert first[-1] == {"role": "user", "content": "task\nYou are in the kitchen."}
    # an instruction that is also the first observation (ETO imports) is not repeated
    assert conversation("P", "X", [Step(observation="X", action="a")])[2]["content"] == "X"


def test_acting_prompts_carry_the_shortest_best_expert_episode_as_etos_one_shot_example():
    from tratree.records.formats import Trajectory
    from tratree.records.prompts import acting_prompt, choose_example

    def traj(task, actions, score):
        steps = [Step(observation=f"{task} o{k}", thought=f"t{k}", action=a) for k, a in enumerate(actions)]
        return Trajectory(task_id=task, instruction=f"{task} goal", steps=steps, score=score)

    expert = [traj("a/train/0", ["x", "y", "z"], 1.0), traj("a/train/1", ["x"], 0.5), traj("a/train/2", ["p", "q"], 1.0),
              traj("a/train/3", ["r", "s"], 1.0)]
    assert choose_example(expert) is expert[2]
    prompt = acting_prompt("scienceworld", True, expert)
    assert prompt == (PROMPTS["scienceworld"] + "\n---\nHere is an example.\na/train/2 goal\na/train/2 o0\n"
                      "Thought: t0\nAction: p\nObservation: a/train/2 o1\n\nThought: t1\nAction: q\n---\n\n"
                      "Now, it's your turn.")
    assert acting_prompt("scienceworld", False, expert) == PROMPTS["scienceworld"]
    with pytest.raises(ValueError, match="no expert trajectory to take the example from"):
        acting_prompt("scienceworld", True, [])


def test_fit_drops_oldest_turns_but_keeps_task_and_latest():
    steps = [Step(observation=f"o{i}", action=f"a{i}") for i in range(6)]
    chat = conversation("P", "T", steps, "now")
    fitted = fit(chat, len, 7)
    assert fitted[:3] == chat[:3] and fitted[-1] == chat[-1] and len(fitted) == 7
    assert fit(chat, len, 100) == chat


def test_cut_reply_stops_at_the_next_observation():
    assert cut_reply("Thought: t\nAction: go\nObservation: you went") == "Thought: t\nAction: go"


@pytest.fixture
def fake_vllm(monkeypatch):
    """vllm's SamplingParams and LoRARequest as recorders, so request construction is checked without a GPU."""
    vllm = types.ModuleType("vllm")
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")

    class SamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LoRARequest:
        def __init__(self, name, int_id, path):
            self.args = (name, int_id, path)

    vllm.SamplingParams = SamplingParams
    request.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", lora)
    monkeypatch.setitem(sys.modules, "vllm.lora.request", request)
    return vllm


class FakeLLM:
    def __init__(self):
        self.calls = []

    def chat(self, conversations, sampling_params, use_tqdm, lora_request):
        self.calls.append((conversations, sampling_params, lora_request))
        out = types.SimpleNamespace
        return [out(outputs=[out(text=f"Thought: t{i}\nAction: a{i}\nObservation: x")]) for i in range(len(conversations))]


def test_vllm_backend_builds_one_batched_chat_call(fake_vllm):
    llm = FakeLLM()
    backend = VLLMBackend("base", max_new_tokens=64, lora_path="/adapters/w", llm=llm)
    replies = backend.generate([GenerationRequest(MESSAGES, 0.7, 0.9, 11), GenerationRequest(MESSAGES, 0.0, 0.5, 12)])
    assert replies == ["Thought: t0\nAction: a0", "Thought: t1\nAction: a1"]
    (convs, params, lora), = llm.calls
    assert convs == [MESSAGES, MESSAGES]
    assert params[0].kwargs == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64, "seed": 11,
                                "stop": ["\nObservation:"]}
    assert params[1].kwargs["top_p"] == 1.0  # greedy ignores top-p
    assert lora.args == ("tratree-adapter", 1, "/adapters/w")
    assert VLLMBackend("merged", llm=FakeLLM()).lora_request() is None


class ChatHandler(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict]] = []
    fail = False

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ChatHandler.bodies.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if ChatHandler.fail:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"model exploded")
            return
        text = f"Thought: hmm\nAction: {body['messages'][-1]['content']}\nObservation: leak"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        """Quiet: the test output is not the server's access log."""


@pytest.fixture
def chat_server():
    ChatHandler.bodies, ChatHandler.fail = [], False
    server = HTTPServer(("127.0.0.1", 0), ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_openai_backend_over_http(chat_server):
    backend = OpenAIBackend(chat_server, "weak-sft", max_new_tokens=32, api_key="k")
    reqs = [GenerationRequest([{"role": "user", "content": f"go {i}"}], 0.5, 0.9, i) for i in range(5)]
    assert backend.generate(reqs) == [f"Thought: hmm\nAction: go {i}" for i in range(5)]
    body = next(b for b in ChatHandler.bodies if b["messages"][0]["content"] == "go 3")
    assert body["path"] == "/v1/chat/completions" and body["auth"] == "Bearer k"
    assert (body["model"], body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (
        "weak-sft", 0.5, 0.9, 32, 3)
    ChatHandler.fail = True
    with pytest.raises(RuntimeError, match="HTTP 500: model exploded"):
        backend.generate(reqs[:1])


def test_openai_backend_unreachable_endpoint():
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", timeout=2)
    with pytest.raises(RuntimeError, match=r"127\.0\.0\.1:9/v1/chat/completions"):
        backend.generate([GenerationRequest(MESSAGES)])


def test_per_row_sampling_applies_each_rows_settings():
    import torch

    from tratree.policy.transformers_backend import PerRowSampling

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    reqs = [GenerationRequest(MESSAGES, 0.0, 0.5), GenerationRequest(MESSAGES, 1.0, 0.7),
            GenerationRequest(MESSAGES, 1.0, 1.0)]
    out = PerRowSampling(reqs, "cpu").filtered(logits.clone())
    finite = torch.isfinite(out)
    assert finite[0].tolist() == [True, False, False, False]  # greedy: the argmax only
    assert finite[1].tolist() == [True, True, False, False]  # top-p 0.7: 0.5 + 0.3 is the nucleus
    assert finite[2].all()
    assert torch.allclose(out[2].softmax(-1), logits[2].softmax(-1))
    hot = PerRowSampling([GenerationRequest(MESSAGES, 2.0, 1.0)], "cpu").filtered(logits[:1].clone())
    assert hot.softmax(-1)[0, 0] < 0.5  # a higher temperature flattens the distribution


def test_per_row_draws_do_not_depend_on_the_batch():
    import torch

    from tratree.policy.transformers_backend import PerRowSampling

    logits = torch.randn(1, 50)
    alone = PerRowSampling([GenerationRequest(MESSAGES, 1.0, 0.95, 7)], "cpu")(None, logits.clone())
    crowd = PerRowSampling([GenerationRequest(MESSAGES, 1.0, 0.95, s) for s in (3, 7, 9)], "cpu")(
        None, logits.repeat(3, 1))
    assert torch.equal(torch.isfinite(alone[0]), torch.isfinite(crowd[1]))
    assert int(torch.isfinite(crowd).sum()) == 3  # one drawn token per row


@pytest.mark.parametrize(("rank", "allowed"), [(8, 8), (64, 64), (48, 64), (200, 256)])
def test_vllm_is_told_the_adapters_rank_rounded_up_to_one_it_serves(tmp_path, rank, allowed):
    from tratree.policy.vllm_backend import max_lora_rank

    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 16}))
    assert max_lora_rank(str(tmp_path)) == allowed  # vLLM's default of 16 refuses tratree's rank-64 adapters


def test_an_adapter_without_a_readable_rank_is_one_line(tmp_path):
    from tratree.errors import UserError
    from tratree.policy.vllm_backend import max_lora_rank

    with pytest.raises(UserError, match=r"adapter_config\.json: cannot read the LoRA rank"):
        max_lora_rank(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 1024}))
    with pytest.raises(UserError, match="above the largest vLLM serves"):
        max_lora_rank(str(tmp_path))
