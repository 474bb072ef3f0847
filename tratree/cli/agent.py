"""The commands that put a model in an environment, or make one: expert trajectories, exploration, evaluation,
and tiny models built from config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tratree.cli.args import CLIError, add_command, experiment, positive_int


def _backend(exp, model: str):
    from tratree.policy import make_backend

    if exp.spec.policy.backend != "openai" and not model.startswith("s3://") and not Path(model).is_dir():
        raise CLIError(f"--model: {model} is not a model directory")
    return make_backend(exp.spec.policy, model)


def _acting_prompt(exp, expert_file: str | None) -> str:
    """The acting prompt of the experiment; its in-context example comes from ``expert_file`` (expert
    trajectories JSONL) or else from the spec's expert source."""
    from tratree.records.prompts import acting_prompt

    env = exp.spec.environment
    expert = None
    if env.icl_example:
        if expert_file:
            from tratree.records.formats import Trajectory, read_jsonl

            expert = read_jsonl(expert_file, Trajectory)
        else:
            from tratree.agent.expert import expert_trajectories

            expert = expert_trajectories(exp.spec, "train")
    try:
        return acting_prompt(env.name, env.icl_example, expert)
    except ValueError as err:
        raise CLIError(f"{expert_file or exp.spec.expert.path or 'expert'}: {err}") from None


def cmd_expert(args: argparse.Namespace) -> None:
    from tratree.agent.expert import expert_trajectories
    from tratree.records.formats import write_jsonl

    exp = experiment(args.experiment)
    trajs = expert_trajectories(exp.spec, args.split, args.limit)
    write_jsonl(args.output, trajs)
    full = sum(t.score >= 1.0 for t in trajs)
    print(f"{len(trajs)} expert trajectories ({full} at full score) -> {args.output}", file=sys.stderr)


def cmd_explore(args: argparse.Namespace) -> None:
    from tratree.agent.explore import explore

    exp = experiment(args.experiment)
    trajs = explore(exp.spec, _backend(exp, args.model), args.output, model=args.model,
                    prompt=_acting_prompt(exp, args.expert), policy=args.policy_name, limit=args.limit)
    ok = sum(t.success for t in trajs)
    print(f"{len(trajs)} trajectories ({ok} successful) -> {args.output}", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from tratree.agent.episodes import dump_json
    from tratree.agent.evaluate import evaluate

    exp = experiment(args.experiment)
    out = Path(args.output)
    trajs = args.trajectories or str(out.with_name(out.stem + ".trajectories.jsonl"))
    result = evaluate(exp.spec, _backend(exp, args.model), trajs, model=args.model,
                      prompt=_acting_prompt(exp, args.expert), split=args.split, limit=args.limit, best_of=args.best_of)
    result["model"] = args.model
    dump_json(out, result)
    print(f"{result['split']}: average reward {result['average_reward']:.1f}, success rate "
          f"{result['success_rate']:.1f}% over {result['tasks']} tasks -> {out}", file=sys.stderr)


def cmd_model_init(args: argparse.Namespace) -> None:
    from tratree.models import tiny

    name = tiny.preset_name(args.preset)
    if name is None:
        raise CLIError(f"--preset: {args.preset!r} is not a tiny:<preset> reference")
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        from tratree.agent.expert import expert_trajectories

        exp = experiment(args.experiment)
        trajs = expert_trajectories(exp.spec, "train", args.limit)
        tokenizer = tiny.train_tokenizer(tiny.corpus(exp.spec.environment.name, trajs))
    tiny.create(name, tokenizer, args.output, seed=args.seed)
    print(f"{args.preset} ({len(tokenizer)}-token vocabulary) -> {args.output}", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the `tratree` parser."""
    sp = add_command(sub, "expert", cmd_expert, "gold trajectories of the experiment's environment")
    sp.add_argument("experiment")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--split", choices=["train", "dev", "test"], default="train")
    sp.add_argument("--limit", type=positive_int, default=None)

    sp = add_command(sub, "explore", cmd_explore, "sample trajectories of a model on the training tasks (resumable)")
    sp.add_argument("experiment")
    sp.add_argument("--model", required=True, help="model directory (or served name for the openai backend)")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--limit", type=positive_int, default=None, help="at most N tasks")
    sp.add_argument("--policy-name", default="sft-weak", help="recorded in each trajectory's meta.policy")
    sp.add_argument("--expert", metavar="EXPERT.jsonl",
                    help="expert trajectories to take the in-context example from (default: the spec's expert)")

    sp = add_command(sub, "evaluate", cmd_evaluate, "average reward and success rate on held-out tasks")
    sp.add_argument("experiment")
    sp.add_argument("--model", required=True)
    sp.add_argument("-o", "--output", required=True, help="METRICS.json")
    sp.add_argument("--split", choices=["train", "dev", "test"], default=None, help="default: the spec's testSplit")
    sp.add_argument("--limit", type=positive_int, default=None, help="at most N tasks")
    sp.add_argument("--best-of", type=positive_int, default=None, help="N sampled episodes per task, best kept")
    sp.add_argument("--trajectories", help="where the episodes go (default: beside METRICS.json)")
    sp.add_argument("--expert", metavar="EXPERT.jsonl",
                    help="expert trajectories to take the in-context example from (default: the spec's expert)")
    model = sub.add_parser("model", help="create models")
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    sp = add_command(model_sub, "init", cmd_model_init, "a tiny model from config, tokenizer trained on the environment")
    sp.add_argument("experiment")
    sp.add_argument("--preset", required=True, help="tiny:weak or tiny:strong")
    sp.add_argument("-o", "--output", required=True)
    sp.add_argument("--tokenizer", help="reuse this tokenizer directory instead of training one")
    sp.add_argument("--limit", type=positive_int, default=200, help="gold trajectories to train the tokenizer on")
    sp.add_argument("--seed", type=int, default=0)
