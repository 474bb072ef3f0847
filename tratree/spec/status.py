"""The W2SGExperiment's ``.status``, as the operator writes it: phase, conditions, one entry per stage, results.

The CRD's status schema is generated from these models (:mod:`tratree.spec.crd`), as the spec's is, and the
API server prunes what the schema does not name: a field the operator writes must be declared here.
Unknown fields in a status read back (an older operator's) are ignored, not refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

StageState = Literal["Pending", "Running", "Cached", "Succeeded", "Failed"]
Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
DONE: tuple[StageState, ...] = ("Succeeded", "Cached")


def _time(description: str) -> Any:
    return Field(None, description=description, json_schema_extra={"format": "date-time"})


class StatusModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore",
                              validate_assignment=True)

    def dump(self) -> dict:
        """The object as the resource holds it: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StageStatus(StatusModel):
    """One stage of the experiment's graph."""

    state: StageState = "Pending"
    key: str = Field(description="the stage's plan key: its spec slice, its inputs' keys and the store")
    attempts: int = Field(0, description="Jobs started for this key (a user retry counts on from retryBase)")
    job: str | None = Field(None, description="the Job of the newest attempt")
    start_time: str | None = _time("when the newest attempt started")
    finish_time: str | None = _time("when the stage finished (or its last attempt failed)")
    retry_base: int | None = Field(None, description="attempts made before the last user retry")
    message: str | None = Field(None, description="why it failed, is retried or cannot start")
    shards: str | None = Field(None, description="a sharded stage's shards done / total")
    final: bool | None = Field(None, description="failed for a reason no retry can help (a request no node can "
                               "meet, Pods the namespace refuses): not retried until a user retry")
    gpu_seconds: float | None = Field(
        None, description="GPU-seconds its Pods used: run time × GPUs requested, every attempt and shard that ended")
    gpu_seconds_by_job: dict[str, float] | None = Field(None, description="the same per Job (one Job per attempt)")


class Condition(StatusModel):
    """A Kubernetes condition (SpecValid, Progressing, Succeeded, Failed, Finished, StoreReachable)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = _time("when status last changed")
    observed_generation: int | None = None


class MethodResult(StatusModel):
    """One method's row of the report (rewards ×100), for `kubectl get` and CI gates."""

    average_reward: float
    average_reward_std: float
    success_rate: float
    seeds: int
    finished_rate: float | None = None
    p_value_vs_sft_strong: float | None = Field(None, description="Welch's test over seed means")
    gap_recovered: float | None = None
    gap_recovered_vs_sft_strong: float | None = None
    dpo_pairs: list[int] | None = Field(None, description="DPO pairs per seed; 0: that DPO trained on nothing")
    optimizer_steps: list[int] | None = Field(None, description="optimizer steps per seed of the method's training")
    few_steps: bool | None = Field(None, description="some seed's training took fewer than 10 optimizer steps")
    paired_diff_vs_sft_strong: float | None = Field(
        None, description="mean per-game difference from sft-strong over the held-out games")
    paired_ci_vs_sft_strong: list[float] | None = Field(
        None, alias="pairedCIVsSftStrong", description="its 95% bootstrap interval over games")
    paired_p_vs_sft_strong: float | None = Field(None, description="two-sided paired t-test over games")
    holm_p: float | None = Field(None, description="the paired p-value, Holm-corrected over the primary methods")
    gpu_hours: float | None = Field(None, description="accelerator-hours of the stages the method needs, shared "
                                    "stages split equally among the methods that need them")


class ExperimentStatus(StatusModel):
    """What the operator last observed and decided about the experiment."""

    phase: Phase | None = None
    observed_generation: int | None = None
    current_stage: str | None = Field(None, description="the stages running, retrying or failed, comma-separated")
    stages: dict[str, StageStatus] = Field(default_factory=dict)
    conditions: list[Condition] = Field(default_factory=list)
    artifacts: dict[str, str] | None = Field(None, description="each done stage's outputs in the store")
    results: dict[str, MethodResult] | None = None
    w2sg_reward: str | None = Field(None, alias="w2sgReward", description="the best weak-to-strong method's average reward")
    sft_strong_reward: str | None = None
    retried: str | None = Field(None, description="the last tratree.io/retry annotation acted on")
    gpu_hours: float | None = Field(None, description="GPU-hours the stages' Pods used, all stages and attempts")
