"""The evaluation stage: a trained model on the held-out tasks."""

from __future__ import annotations

import json
import shutil
from typing import Any

from tratree.pipeline.actions.context import StageContext
from tratree.pipeline.actions.data import act, model_input
from tratree.pipeline.actions.training import REPORTED, TRAINING


def evaluate(ctx: StageContext) -> dict[str, Any]:
    from tratree.agent.evaluate import evaluation_episodes, metrics
    from tratree.agent.explore import split_tasks

    split, best_of = ctx.spec.environment.test_split, ctx.stage.params["best_of"]
    episodes = evaluation_episodes(ctx.spec, split_tasks(ctx.spec, split), best_of)
    trajs = act(ctx, episodes, f"evaluating ({split})" + ("" if ctx.shard is None else f", shard {ctx.shard[0]}"))
    # what the model was trained on, for the report: a shard keeps a copy for the merge
    training = model_input(ctx) / TRAINING if ctx.merge_from is None else ctx.merge_from[0] / TRAINING
    if ctx.shard is not None:
        if training.is_file():
            shutil.copyfile(training, ctx.out / TRAINING)
        return {"episodes": len(trajs), "successes": sum(t.success for t in trajs)}
    result = metrics(trajs, split, best_of, ctx.spec.environment.name)
    result |= {"method": ctx.stage.params["method"], "seed": ctx.stage.params["seed"]}
    if training.is_file():
        result["training"] = {k: v for k, v in json.loads(training.read_text()).items() if k in REPORTED}
    (ctx.out / "metrics.json").write_text(json.dumps(result, indent=2))
    return {k: result[k] for k in ("average_reward", "success_rate", "finished_rate", "tasks", "method", "seed")}
