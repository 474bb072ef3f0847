"""Turning trajectories, paths and pairs into token ids with per-token loss masks.

Masks come from rendering the chat template on growing prefixes of the conversation, so they
work for any template that renders prefix-consistently (ChatML, Llama, the tiny models'):
an assistant turn's tokens are those between the prompt-with-generation-header before it and
the end-of-turn token after it. Everything else (instruction, observations) is masked out.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from tratree.errors import UserError
from tratree.records.formats import Pair, Step, Trajectory
from tratree.records.prompts import PROMPTS, conversation
from tratree.records.react import format_reply

Messages = list[dict[str, str]]


class NothingToLearn(UserError, ValueError):
    """maxLength cuts every example before its first reply: training would learn nothing."""


def check_fits(starts: Sequence[int], max_length: int, what: str) -> None:
    """Refuse training where ``maxLength`` leaves no example a token to learn from (``starts``: where
    each example's first trained token is); say how many lose everything when some do."""
    lost = sum(k >= max_length for k in starts)
    if starts and lost == len(starts):
        raise NothingToLearn(f"maxLength {max_length} ends every {what} before its first reply (the earliest "
                             f"reply starts at token {min(starts)}): nothing would be learned; raise maxLength")
    if lost:
        print(f"tratree: warning: {lost} of {len(starts)} {what}s have no reply within maxLength {max_length}; "
              "they teach nothing", file=sys.stderr)


class TemplateError(ValueError):
    """The chat template does not render a conversation's prefixes as prefixes of the whole."""


class TokenizerMismatch(ValueError):
    """Policy and reference tokenize differently, so their log-probabilities cannot be compared."""


def _ids(tokenizer: Any, messages: Messages, add_generation_prompt: bool = False) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=add_generation_prompt
    )
    return list(out["input_ids"])


def encode_chat(tokenizer: Any, messages: Messages, start: int = 0) -> tuple[list[int], list[int]]:
    """(token ids, mask) of a conversation; mask is 1 on assistant tokens of turns from ``start`` on."""
    full = _ids(tokenizer, messages)
    mask = [0] * len(full)
    eos = tokenizer.eos_token_id
    for i in range(start, len(messages)):
        if messages[i]["role"] != "assistant":
            continue
        begin = len(_ids(tokenizer, messages[:i], add_generation_prompt=True))
        upto = _ids(tokenizer, messages[: i + 1])
        if full[: len(upto)] != upto or begin > len(upto):
            raise TemplateError("the chat template does not render conversation prefixes consistently")
        end = len(upto)
        # the turn ends with its end-of-turn token; separators the template adds after it are not trained
        for k in range(end - 1, begin - 1, -1):
            if upto[k] == eos:
                end = k + 1
                break
        for k in range(begin, end):
            mask[k] = 1
    return full, mask


def trajectory_messages(env_name: str, traj: Trajectory) -> Messages:
    """The chat of a whole trajectory, as the agent saw and answered it."""
    return conversation(PROMPTS[env_name], traj.instruction, traj.steps)


def sft_example(tokenizer: Any, env_name: str, traj: Trajectory) -> dict[str, list[int]]:
    """An SFT example: ids and the assistant-only mask."""
    ids, mask = encode_chat(tokenizer, trajectory_messages(env_name, traj))
    return {"input_ids": ids, "assistant_masks": mask}


def _continuation(steps: Sequence[Step]) -> Messages:
    out: Messages = []
    for k, step in enumerate(steps):
        if k > 0:
            out.append({"role": "user", "content": f"Observation: {step.observation}"})
        out.append({"role": "assistant", "content": format_reply(step.thought, step.action)})
    return out


def pair_messages(env_name: str, pair: Pair) -> tuple[Messages, Messages, Messages]:
    """(prompt, chosen, rejected): the prompt is the task and the shared prefix h, ending on the
    observation where the continuations diverge (the chosen one's, should they differ)."""
    prompt = conversation(PROMPTS[env_name], pair.instruction, pair.prefix, pair.chosen[0].observation)
    return prompt, _continuation(pair.chosen), _continuation(pair.rejected)


def dpo_example(tokenizer: Any, env_name: str, pair: Pair) -> dict[str, list[int]]:
    """A DPO example: shared prompt ids, and each continuation's ids with its assistant-only mask."""
    prompt, chosen, rejected = pair_messages(env_name, pair)
    prompt_ids = _ids(tokenizer, prompt, add_generation_prompt=True)
    out: dict[str, list[int]] = {"prompt_ids": prompt_ids}
    for name, completion in (("chosen", chosen), ("rejected", rejected)):
        ids, mask = encode_chat(tokenizer, prompt + completion, start=len(prompt))
        if ids[: len(prompt_ids)] != prompt_ids:
            raise TemplateError("the chat template does not render the prompt as a prefix of prompt + completion")
        out[f"{name}_ids"] = ids[len(prompt_ids) :]
        out[f"{name}_mask"] = mask[len(prompt_ids) :]
    return out


def check_same_tokenizer(policy: Any, reference: Any) -> None:
    """Refuse a reference whose tokenizer differs from the policy's."""
    a, b = policy.get_vocab(), reference.get_vocab()
    if a != b:
        raise TokenizerMismatch(
            f"the reference model's tokenizer differs from the policy's ({len(b)} vs {len(a)} tokens, "
            f"{sum(1 for k in a if a[k] != b.get(k))} differ); DPO needs one tokenizer for both"
        )
    if policy.eos_token_id != reference.eos_token_id or policy.chat_template != reference.chat_template:
        raise TokenizerMismatch("the reference model's end-of-turn token or chat template differs from the policy's")
