"""Benchmark of environments and exploration.

    python bench/explore.py

Environment steps/s for TextWorldExpress and ScienceWorld (one instance, gold actions
replayed), then exploration throughput of an untrained tiny:weak model on the quickstart's
CookingWorld: the same episodes run one at a time and batched, as episodes/min and
generated tokens/s.
"""

from __future__ import annotations

import os
import tempfile
import time

os.environ.setdefault("JAVA_TOOL_OPTIONS", "-Xmx384m")

from rich.console import Console
from rich.table import Table

from tratree.agent.explore import exploration_episodes, split_tasks
from tratree.agent.rollout import run_episodes
from tratree.envs import env_factory, env_pool, make_env
from tratree.policy.transformers_backend import TransformersBackend
from tratree.records.prompts import PROMPTS
from tratree.spec.experiment import EnvironmentSpec, parse_experiment

QUICK = {"name": "textworldexpress", "tasks": ["cookingworld"], "maxSteps": 8,
         "gameParams": "numLocations=1,numIngredients=2,numDistractorItems=2,includeDoors=0,limitInventorySize=0"}


def env_steps_per_second(spec: EnvironmentSpec, tasks: int) -> tuple[float, int]:
    env = make_env(spec)
    try:
        groups = env.tasks("train")
        ids = [t for g in groups.values() for t in g[:tasks]]
        plans = [(t, env.gold_actions(t)) for t in ids]
        steps, t0 = 0, time.perf_counter()
        for task, actions in plans:
            env.reset(task)
            for a in actions:
                env.step(a)
                steps += 1
        return steps / (time.perf_counter() - t0), steps
    finally:
        env.close()


def exploration(batch: int, model_dir: str, tasks: int = 24, samples: int = 4) -> tuple[float, float, int]:
    spec = parse_experiment({"weak": {"model": "tiny:weak"}, "strong": {"model": "tiny:strong"}, "environment": QUICK,
                             "policy": {"batchSize": batch, "maxNewTokens": 24},
                             "exploration": {"trajectoriesPerTask": samples}}).spec
    backend = TransformersBackend.from_pretrained(model_dir, 24, batch)
    episodes = exploration_episodes(spec, split_tasks(spec, "train", tasks), "bench")
    with env_pool(env_factory(spec.environment)) as pool:
        pool.prestart(batch)  # JVM start-up is paid once per run, not per episode: keep it out
        t0 = time.perf_counter()
        n = sum(1 for _ in run_episodes(episodes, pool, backend, PROMPTS["textworldexpress"], lambda _: 8, batch))
        dt = time.perf_counter() - t0
    return n / dt * 60, backend.generated_tokens / dt, n


def main() -> None:
    console = Console(width=160)
    envs = Table(title="environment steps/s (gold actions, one instance)")
    for col in ("environment", "steps", "steps/s"):
        envs.add_column(col, justify="right")
    for name, spec, n in (
        ("TextWorldExpress cookingworld", EnvironmentSpec(name="textworldexpress", tasks=["cookingworld"]), 20),
        ("ScienceWorld find-living-thing, lifespan", EnvironmentSpec(
            name="scienceworld", tasks=["find-living-thing", "lifespan-longest-lived"]), 2),
    ):
        rate, steps = env_steps_per_second(spec, n)
        envs.add_row(name, str(steps), f"{rate:,.1f}")
    console.print(envs)

    from tratree.agent.expert import expert_trajectories
    from tratree.models.tiny import corpus, create, train_tokenizer

    qspec = parse_experiment({"weak": {"model": "tiny:weak"}, "strong": {"model": "tiny:strong"},
                              "environment": QUICK}).spec
    tok = train_tokenizer(corpus("textworldexpress", expert_trajectories(qspec, "train", 40)))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(create("weak", tok, os.path.join(tmp, "weak")))
        table = Table(title="exploration, untrained tiny:weak, 96 episodes x up to 8 steps, 24 new tokens per reply")
        for col in ("episodes in flight", "episodes", "episodes/min", "generated tokens/s", "speed-up"):
            table.add_column(col, justify="right")
        base = None
        for batch in (1, 4, 16, 32):
            per_min, tok_s, n = exploration(batch, model_dir)
            base = base or per_min
            table.add_row(str(batch), str(n), f"{per_min:,.1f}", f"{tok_s:,.0f}", f"{per_min / base:.1f}x")
        console.print(table)


if __name__ == "__main__":
    main()
