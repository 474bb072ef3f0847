"""Status: the experiment's phase, conditions and results table, rendered from its stages' entries.

Conditions keep their ``lastTransitionTime`` while their status stays the same. Events for phase changes
and for a store that stopped answering come from comparing the old status with the new, so a lost status
write tells the same story on the next pass.
"""

from __future__ import annotations

from typing import Any

from tratree.pipeline.graph import W2SG_METHODS
from tratree.spec.experiment import ExperimentSpec
from tratree.spec.status import DONE, Condition, ExperimentStatus, MethodResult, StageStatus
from tratree_operator.types import Event, Observed


def condition(old: list[Condition], kind: str, ok: bool, reason: str, message: str, gen: int | None,
              now: str) -> Condition:
    """Condition ``kind``, keeping the time of its last change when its status has not changed."""
    status = "True" if ok else "False"
    prev = next((c for c in old if c.type == kind), None)
    since = prev.last_transition_time if prev and prev.status == status and prev.last_transition_time else now
    return Condition(type=kind, status=status, reason=reason, message=message, last_transition_time=since,
                     observed_generation=gen)


def invalid(old: ExperimentStatus, message: str, reason: str, gen: int | None, now: str) -> tuple[ExperimentStatus, bool]:
    """The status of a spec that no Job is made for; and whether it already said so (the same message)."""
    conds = old.conditions
    status = old.model_copy(update={"phase": "Failed", "observed_generation": gen, "conditions": [
        condition(conds, "SpecValid", False, reason, message, gen, now),
        condition(conds, "Progressing", False, reason, "no Job is made for an invalid spec", gen, now),
        condition(conds, "Succeeded", False, reason, "", gen, now),
        condition(conds, "Failed", True, reason, message, gen, now),
        condition(conds, "Finished", True, "Failed", "", gen, now),
    ]})
    said = any(c.type == "SpecValid" and c.status == "False" and c.message == message for c in conds)
    return status, said


def results_table(results: dict[str, Any]) -> tuple[dict[str, MethodResult], str | None, str | None]:
    """The report's results as the status holds them, and the two printer-column values."""
    table = {}
    for method, row in (results.get("methods") or {}).items():
        entry = MethodResult(average_reward=round(row["average_reward"]["mean"], 2),
                             average_reward_std=round(row["average_reward"]["std"], 2),
                             success_rate=round(row["success_rate"]["mean"], 2), seeds=row.get("seeds", 1))
        if row.get("p_value_vs_sft_strong") is not None:
            entry.p_value_vs_sft_strong = round(row["p_value_vs_sft_strong"], 4)
        if row.get("gap_recovered") is not None:
            entry.gap_recovered = round(row["gap_recovered"], 3)
        if row.get("gap_recovered_vs_sft_strong") is not None:
            entry.gap_recovered_vs_sft_strong = round(row["gap_recovered_vs_sft_strong"], 3)
        if "finished_rate" in row:
            entry.finished_rate = round(row["finished_rate"]["mean"], 2)
        if "pairs" in row:
            entry.dpo_pairs = list(row["pairs"])  # per seed; 0 means that DPO trained on nothing
        if "optimizer_steps" in row:  # per seed; a CI gate can refuse a row that barely trained
            entry.optimizer_steps = list(row["optimizer_steps"])
            entry.few_steps = bool(row.get("few_steps"))
        if "paired_mean" in row:  # the paired comparison with sft-strong over held-out games
            entry.paired_diff_vs_sft_strong = round(row["paired_mean"], 2)
            entry.paired_ci_vs_sft_strong = [round(v, 2) for v in row["paired_ci"]]
            if row.get("paired_p") is not None:
                entry.paired_p_vs_sft_strong = round(row["paired_p"], 4)
            if row.get("holm_p") is not None:
                entry.holm_p = round(row["holm_p"], 4)
        if "gpu_hours" in row:
            entry.gpu_hours = round(row["gpu_hours"]["total"], 3)
        table[method] = entry
    w2sg = [table[m].average_reward for m in W2SG_METHODS if m in table]
    best = f"{max(w2sg):.1f}" if w2sg else None
    sft = f"{table['sft-strong'].average_reward:.1f}" if "sft-strong" in table else None
    return table, best, sft


def render(observed: Observed, old: ExperimentStatus, spec: ExperimentSpec, entries: dict[str, StageStatus],
           failed: list[str], now: str, gen: int | None, retried: str | None = None) -> ExperimentStatus:
    """The whole status from the stages' entries: phase, conditions, current stages, artifacts, results."""
    running = [n for n, e in entries.items() if e.state == "Running"]
    retrying = [n for n, e in entries.items() if e.state == "Pending" and e.message]
    done = all(e.state in DONE for e in entries.values())
    if failed:
        phase = "Failed"
    elif done:
        phase = "Succeeded"
    elif running or retrying or any(e.state in DONE for e in entries.values()):
        phase = "Running"
    else:
        phase = "Pending"
    conds = old.conditions
    if failed:
        progressing = (False, "StageFailed", f"stage {failed[0]} failed")
    elif done:
        progressing = (False, "Completed", "every stage is done")
    elif spec.suspend:
        progressing = (False, "Suspended", "spec.suspend is true: no new Job is made")
    elif running:
        progressing = (True, "StagesRunning", ", ".join(running))
    elif retrying:
        progressing = (True, "Retrying", ", ".join(retrying))
    else:
        progressing = (True, "Waiting", "waiting for stages to start")
    reachable = observed.manifests is not None
    conditions = [
        condition(conds, "SpecValid", True, "Valid", "", gen, now),
        condition(conds, "Progressing", *progressing, gen, now),
        condition(conds, "Succeeded", done, "AllStagesDone" if done else "StageFailed" if failed else "InProgress",
                  "", gen, now),
        condition(conds, "Failed", bool(failed), "StageFailed" if failed else "NoFailure",
                  f"stage {failed[0]}: {entries[failed[0]].message or ''}" if failed else "", gen, now),
        # either end, for `kubectl wait --for=condition=Finished` (kubectl cannot wait for one of two)
        condition(conds, "Finished", bool(failed) or done, "Failed" if failed else "Succeeded" if done else
                  "InProgress", "", gen, now),
        condition(conds, "StoreReachable", reachable, "Reachable" if reachable else "Unreachable",
                  "" if reachable else f"{spec.artifacts} cannot be read"
                  f"{': ' + observed.store_problem if observed.store_problem else ''}; Jobs are made anyway", gen, now),
    ]
    status = ExperimentStatus(phase=phase, observed_generation=gen, stages=entries, conditions=conditions,
                              retried=retried or None,
                              current_stage=",".join(running or retrying or failed) or None)
    used = [e.gpu_seconds for e in entries.values() if e.gpu_seconds]
    if used:
        status.gpu_hours = round(sum(used) / 3600, 3)
    if observed.manifests is not None:
        base = spec.artifacts.rstrip("/")
        status.artifacts = {n: f"{base}/{m['prefix']}" for n, m in observed.manifests.items() if n in entries}
    elif old.artifacts:
        status.artifacts = {n: u for n, u in old.artifacts.items() if n in entries}
    report_done = "report" in entries and entries["report"].state in DONE
    if report_done and observed.results is not None:
        status.results, status.w2sg_reward, status.sft_strong_reward = results_table(observed.results)
    elif report_done:
        status.results, status.w2sg_reward, status.sft_strong_reward = (
            old.results, old.w2sg_reward, old.sft_strong_reward)
    return status


def phase_events(old: ExperimentStatus, new: ExperimentStatus, observed: Observed) -> list[Event]:
    """Events for a phase the experiment just reached, and for a store that just stopped answering."""
    events = []
    if new.phase != old.phase:
        if new.phase == "Succeeded":
            extra = (f"; W2SG {new.w2sg_reward}, sft-strong {new.sft_strong_reward or '—'}"
                     if new.w2sg_reward is not None else "")
            events.append(Event("Normal", "ExperimentSucceeded", f"every stage is done{extra}"))
        elif new.phase == "Failed":
            fail = next(c for c in new.conditions if c.type == "Failed")
            events.append(Event("Warning", "ExperimentFailed", fail.message or ""))
    was = next((c.status for c in old.conditions if c.type == "StoreReachable"), "True")
    if observed.manifests is None and was != "False":
        msg = next(c.message for c in new.conditions if c.type == "StoreReachable")
        events.append(Event("Warning", "StoreUnreachable", msg or ""))
    return events


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new``; ``{}`` when they are equal."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            sub = merge_patch(old[key], value)
            if isinstance(value, dict) and isinstance(old[key], dict) and not sub:
                continue
            patch[key] = sub
    return patch
