"""Training tiny models for real: SFT, DPO against the weak model, LoRA, masks, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from tests.conftest import small_spec
from tratree.agent.expert import expert_trajectories
from tratree.models.loading import load_causal_lm
from tratree.models.tiny import build_model, corpus, train_tokenizer
from tratree.policy.base import GenerationRequest
from tratree.policy.transformers_backend import TransformersBackend
from tratree.records.formats import Pair, Step
from tratree.records.prompts import PROMPTS, conversation
from tratree.records.react import parse_reply
from tratree.spec.experiment import DPOTrainingSpec, LoraSpec, TrainingSpec
from tratree.train.datasets import TokenizerMismatch, dpo_example, encode_chat
from tratree.train.dpo import train_dpo
from tratree.train.sft import train_sft

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIMPLE = {"gameParams": "numLocations=1,numIngredients=1,numDistractorItems=0,includeDoors=0,limitInventorySize=0",
          "maxSteps": 20}


@pytest.fixture(scope="module")
def gold():
    spec = small_spec(environment=SIMPLE)
    return expert_trajectories(spec, "train", 8), expert_trajectories(spec, "test", 4)


@pytest.fixture(scope="module")
def tok(gold):
    return train_tokenizer(corpus("textworldexpress", gold[0]))


def masked_logps(model, example, which: str) -> tuple[float, float]:
    """(sum of log-probs over the masked completion tokens, over all completion tokens)."""
    ids = example["prompt_ids"] + example[f"{which}_ids"]
    mask = [0] * len(example["prompt_ids"]) + example[f"{which}_mask"]
    complete = [0] * len(example["prompt_ids"]) + [1] * len(example[f"{which}_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    logp = logits.log_softmax(-1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    return float((logp * torch.tensor(mask[1:])).sum()), float((logp * torch.tensor(complete[1:])).sum())


def test_assistant_mask_token_by_token(tok, gold):
    traj = gold[0][0]
    messages = conversation(PROMPTS["textworldexpress"], traj.instruction, traj.steps)
    ids, mask = encode_chat(tok, messages)
    spans, current = [], []
    for t, m in zip(ids, mask, strict=True):
        if m:
            current.append(t)
        elif current:
            spans.append(tok.decode(current))
            current = []
    replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert spans == replies
    # everything else, observations and headers included, is masked out
    unmasked = tok.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    assert all(s.observation in unmasked for s in traj.steps[1:])
    assert "Thought: I should" not in unmasked  # no reply leaks into the unmasked part


def test_sft_learns_the_react_format(tmp_path, tok, gold):
    train, test = gold
    model = build_model("weak", tok, seed=0)
    spec = TrainingSpec(epochs=60, learning_rate=5e-3, batch_size=4, micro_batch_size=4, max_length=2048,
                        warmup_ratio=0.05)
    result = train_sft(model, tok, train, "textworldexpress", spec, tmp_path / "weak")
    assert result["loss_last"] < result["loss_first"] / 10
    backend = TransformersBackend.from_pretrained(str(tmp_path / "weak"), max_new_tokens=40)
    well_formed = 0
    for traj in test:
        for k in range(1, min(4, len(traj.steps))):
            reply = backend.generate([GenerationRequest(conversation(
                PROMPTS["textworldexpress"], traj.instruction, traj.steps[:k], traj.steps[k].observation))])[0]
            thought, action = parse_reply(reply)
            well_formed += reply.startswith("Thought: ") and bool(thought) and action is not None
    assert well_formed >= 9  # of 12 replies on unseen tasks


def two_step_pairs() -> list[Pair]:
    def s(obs, act):
        return Step(observation=obs, thought=f"I should {act}.", action=act)

    out = []
    for k in range(6):
        prefix = [s(f"You are in the kitchen {k}.", "look around")]
        chosen = [s("You see a cookbook.", "take cookbook"), s("You take the cookbook. A long note follows.", "read cookbook")]
        rejected = [s("You see a cookbook.", "eat cookbook"), s("That is not edible! Something else happens.", "look around")]
        out.append(Pair(task_id=f"t{k}", instruction="You are hungry!", prefix=prefix, chosen=chosen, rejected=rejected,
                        chosen_value=1.0, rejected_value=0.0, node=1))
    return out


def test_dpo_against_the_weak_reference(tmp_path, tok):
    pairs = two_step_pairs()
    weak = build_model("weak", tok, seed=3)
    policy = build_model("strong", tok, seed=4)
    spec = DPOTrainingSpec(epochs=6, learning_rate=1e-3, batch_size=6, micro_batch_size=6, max_length=1024, beta=0.1,
                           warmup_ratio=0.0)
    ex = dpo_example(tok, "textworldexpress", pairs[0])
    # observation tokens inside the continuation are masked: fewer scored tokens than completion tokens
    assert 0 < sum(ex["chosen_mask"]) < len(ex["chosen_ids"])
    weak_chosen, weak_chosen_all = masked_logps(weak, ex, "chosen")
    weak_rejected, _ = masked_logps(weak, ex, "rejected")
    policy_chosen, _ = masked_logps(policy, ex, "chosen")
    result = train_dpo(policy, tok, pairs, "textworldexpress", spec, tmp_path / "dpo", ref_model=weak,
                       ref_tokenizer=tok)
    # the stored reference log-probs are the weak model's, over assistant tokens only
    assert result["ref_logps"]["chosen"][0] == pytest.approx(weak_chosen, rel=1e-4)
    assert result["ref_logps"]["rejected"][0] == pytest.approx(weak_rejected, rel=1e-4)
    assert result["ref_logps"]["chosen"][0] != pytest.approx(policy_chosen, rel=1e-3)
    assert result["ref_logps"]["chosen"][0] != pytest.approx(weak_chosen_all, rel=1e-3)
    # DPO raised the chosen-vs-rejected margin relative to the reference
    trained, _ = load_causal_lm(str(tmp_path / "dpo"))
    after_c, _ = masked_logps(trained, ex, "chosen")
    after_r, _ = masked_logps(trained, ex, "rejected")
    before_margin = (policy_chosen - weak_chosen) - (masked_logps(policy, ex, "rejected")[0] - weak_rejected)
    after_margin = (after_c - weak_chosen) - (after_r - weak_rejected)
    assert after_margin > before_margin + 1.0
    assert result["losses"][-1] < result["losses"][0]


def test_a_dpo_of_three_pairs_reports_what_it_did_and_says_it_took_few_steps(tmp_path, tok, capfd):
    pairs = two_step_pairs()[:3]
    weak = build_model("weak", tok, seed=3)
    policy = build_model("strong", tok, seed=4)
    beta = 0.1
    examples = [dpo_example(tok, "textworldexpress", p) for p in pairs]
    by_hand = []
    for ex in examples:  # DPO's implicit reward margin of the untrained policy, computed here token by token
        (pc, _), (pr, _) = masked_logps(policy, ex, "chosen"), masked_logps(policy, ex, "rejected")
        (wc, _), (wr, _) = masked_logps(weak, ex, "chosen"), masked_logps(weak, ex, "rejected")
        by_hand.append(beta * ((pc - wc) - (pr - wr)))
    spec = DPOTrainingSpec(epochs=1, learning_rate=1e-3, batch_size=1, micro_batch_size=1, max_length=1024, beta=beta,
                           warmup_ratio=0.03)
    result = train_dpo(policy, tok, pairs, "textworldexpress", spec, tmp_path / "dpo", ref_model=weak,
                       ref_tokenizer=tok)
    # three steps, each at the full learning rate: warmup is floor(0.03 x 3) = 0, not a step at 0
    assert result["steps"] == result["planned_steps"] == 3
    assert result["lr_sum"] == pytest.approx(3 * 1e-3)
    assert result["few_steps"] and result["weight_change"] > 0
    # what it ran on, so that two runs that differ can be told apart from a changed recipe
    assert result["compute"]["device"] == "cpu" and result["compute"]["threads"] >= 1
    assert result["compute"]["torch"] == torch.__version__ and result["compute"]["cpu_capability"]
    before, after = result["preference"]["before"], result["preference"]["after"]
    assert before["margin"] == pytest.approx(sum(by_hand) / 3, rel=1e-3, abs=1e-4)
    assert before["accuracy"] == pytest.approx(sum(m > 0 for m in by_hand) / 3)
    assert after["margin"] > before["margin"] and after["accuracy"] == 1.0
    err = capfd.readouterr().err
    assert "DPO on 3 pairs: only 3 optimizer step(s) (under 10)" in err
    # without a terminal, progress is a line a step here (a twentieth of the run, at least one step)
    assert [line.split(", loss")[0] for line in err.splitlines() if ": step " in line] == [
        f"tratree: DPO on 3 pairs: step {k}/3" for k in (1, 2, 3)]
    assert "Computing reference log probs" not in err  # TRL's bar, off in a log


def test_sft_takes_the_planned_steps_and_measures_how_far_the_weights_moved(tmp_path, tok, gold):
    model = build_model("weak", tok, seed=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    # 7 trajectories, micro-batch 2, batch 4, 1.5 epochs: a partial micro-batch, accumulation and epoch
    spec = TrainingSpec(epochs=1.5, learning_rate=5e-3, batch_size=4, micro_batch_size=2, max_length=2048,
                        warmup_ratio=0.5, lr_scheduler="constant_with_warmup")
    result = train_sft(model, tok, gold[0][:7], "textworldexpress", spec, tmp_path / "weak")
    assert result["steps"] == result["planned_steps"] == 3
    # one warmup step (floor 0.5 x 3): the first update at 0, then two at the full rate
    assert result["lr_sum"] == pytest.approx(2 * 5e-3)
    moved = sum(float((p.detach() - start[n]).pow(2).sum()) for n, p in model.named_parameters()) ** 0.5
    norm = sum(float(t.pow(2).sum()) for t in start.values()) ** 0.5
    assert result["weight_change"] == pytest.approx(moved / norm, rel=1e-4) and result["weight_change"] > 0


def test_mismatched_reference_tokenizer_is_refused(tmp_path, tok, gold):
    other = train_tokenizer(["completely different text for another tokenizer"] * 20)
    with pytest.raises(TokenizerMismatch, match="tokenizer differs"):
        train_dpo(build_model("weak", tok), tok, two_step_pairs(), "textworldexpress", DPOTrainingSpec(),
                  tmp_path / "x", ref_model=build_model("weak", other), ref_tokenizer=other)
    assert not (tmp_path / "x").exists()


def sha(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_lora_round_trips_and_same_seed_same_weights(tmp_path, tok, gold):
    train = gold[0][:3]
    spec = TrainingSpec(epochs=1, learning_rate=1e-3, batch_size=4, micro_batch_size=4, max_length=1024)
    lora = LoraSpec(r=8, alpha=16, dropout=0.0, merge=False)
    base_dir = tmp_path / "base"
    from tratree.models.loading import save_model

    save_model(build_model("weak", tok, seed=0), tok, base_dir)
    model, _ = load_causal_lm(str(base_dir))
    result = train_sft(model, tok, train, "textworldexpress", spec, tmp_path / "adapter", lora=lora)
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    adapter, _ = load_causal_lm(str(tmp_path / "adapter"))
    x = torch.tensor([tok("You are in the kitchen.")["input_ids"]])
    with torch.no_grad():
        adapter_logits = adapter(x).logits
        merged = adapter.merge_and_unload()
        assert torch.allclose(merged(x).logits, adapter_logits, atol=1e-5)
    # how far a LoRA run moved the weights: its merged weights against the base model's
    base = dict(load_causal_lm(str(base_dir))[0].named_parameters())
    moved = sum(float((p.detach() - base[n].detach()).pow(2).sum()) for n, p in merged.named_parameters()) ** 0.5
    norm = sum(float(p.detach().pow(2).sum()) for p in base.values()) ** 0.5
    assert result["weight_change"] == pytest.approx(moved / norm, rel=1e-3) and result["weight_change"] > 0
    from tratree.models.loading import save_model as save

    save(merged, tok, tmp_path / "merged")
    reloaded, _ = load_causal_lm(str(tmp_path / "merged"))
    with torch.no_grad():
        assert torch.allclose(reloaded(x).logits, adapter_logits, atol=1e-5)
    # same seed and inputs: the same weights, byte for byte
    for name in ("a", "b"):
        train_sft(build_model("weak", tok, seed=0), tok, train, "textworldexpress", spec, tmp_path / name, seed=7)
    assert sha(tmp_path / "a") == sha(tmp_path / "b")


def test_saved_models_follow_the_umask_so_a_shared_store_can_read_them(tmp_path, tok):
    import os
    import stat

    from tratree.models.loading import save_model

    old = os.umask(0o002)  # a lab's group-shared store
    try:
        out = save_model(build_model("weak", tok, seed=0), tok, tmp_path / "model")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o775
    assert all(stat.S_IMODE(f.stat().st_mode) & 0o664 == 0o664 for f in out.iterdir())


def test_an_s3_model_cache_is_verified_and_refetched_when_broken_or_changed(tmp_path, s3_env):
    import os

    import boto3

    from tratree.models.loading import resolve
    from tratree.store.artifacts import StoreError

    s3 = boto3.client("s3")
    for name, body in (("config.json", b'{"a": 1}'), ("model.safetensors", b"w" * 1000)):
        s3.put_object(Bucket=s3_env, Key=f"models/m/{name}", Body=body)
    cache = str(tmp_path / "cache")
    local = Path(resolve(f"s3://{s3_env}/models/m", cache))
    weights = local / "model.safetensors"
    assert weights.read_bytes() == b"w" * 1000
    # a corrupted cached file (same size, touched): found by its sha256 and fetched again
    weights.write_bytes(b"x" * 1000)
    assert Path(resolve(f"s3://{s3_env}/models/m", cache)) == local and weights.read_bytes() == b"w" * 1000
    # a truncated one, and one removed
    weights.write_bytes(b"w" * 10)
    resolve(f"s3://{s3_env}/models/m", cache)
    assert weights.read_bytes() == b"w" * 1000
    os.unlink(local / "config.json")
    resolve(f"s3://{s3_env}/models/m", cache)
    assert (local / "config.json").read_bytes() == b'{"a": 1}'
    # the model replaced in the store: the new one is fetched
    s3.put_object(Bucket=s3_env, Key="models/m/model.safetensors", Body=b"v" * 1000)
    resolve(f"s3://{s3_env}/models/m", cache)
    assert weights.read_bytes() == b"v" * 1000
    assert [p.name for p in Path(cache).iterdir()] == [local.name]  # no temp directory left
    with pytest.raises(StoreError, match="no objects under this prefix"):
        resolve(f"s3://{s3_env}/models/none", cache)


def test_a_max_length_that_cuts_every_reply_is_refused_before_training(tmp_path, tok, gold):
    from tratree.train.datasets import NothingToLearn

    short = TrainingSpec(epochs=1, learning_rate=1e-3, batch_size=4, micro_batch_size=4, max_length=16)
    with pytest.raises(NothingToLearn, match="maxLength 16 ends every trajectory before its first reply"):
        train_sft(build_model("weak", tok), tok, gold[0][:2], "textworldexpress", short, tmp_path / "sft")
    with pytest.raises(NothingToLearn, match="maxLength 16 ends every pair before its first reply"):
        train_dpo(build_model("weak", tok), tok, two_step_pairs(), "textworldexpress",
                  DPOTrainingSpec(max_length=16, batch_size=4, micro_batch_size=4), tmp_path / "dpo")
    assert not (tmp_path / "sft").exists() and not (tmp_path / "dpo").exists()
