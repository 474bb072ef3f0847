"""The evaluation stage: a trained model on the held-out tasks."""

from __future__ import annotations

import json
from typing import Any

from tratree.stages import StageContext
from tratree.stages.data import acting_prompt, model_input
from tratree.stages.train import TRAINING


def evaluate(ctx: StageContext) -> dict[str, Any]:
    from tratree.evaluate import evaluate as run
    from tratree.policy import make_backend

    model_dir = model_input(ctx)
    backend = make_backend(ctx.spec.policy, str(model_dir))
    result = run(ctx.spec, backend, ctx.out / "trajectories.jsonl", model=str(model_dir), prompt=acting_prompt(ctx),
                 best_of=ctx.stage.params["best_of"])
    result |= {"method": ctx.stage.params["method"], "seed": ctx.stage.params["seed"]}
    training = model_dir / TRAINING
    if training.is_file():
        result["training"] = {k: v for k, v in json.loads(training.read_text()).items() if k in ("pairs", "steps", "examples")}
    (ctx.out / "metrics.json").write_text(json.dumps(result, indent=2))
    return {k: result[k] for k in ("average_reward", "success_rate", "finished_rate", "tasks", "method", "seed")}
