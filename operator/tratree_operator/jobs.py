"""The Kubernetes objects the operator makes for an experiment: its spec ConfigMap and stage Jobs.

Names are deterministic: the same experiment (object), stage, plan key and attempt always give the
same Job name, so a restarted operator finds the Job it made instead of making a second one.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import yaml

from tratree.pipeline.graph import Stage
from tratree.spec.experiment import API_VERSION, KIND, ExperimentSpec
from tratree_operator.config import IMAGE_OF_KIND, OperatorConfig
from tratree_operator.types import ANNOTATION_KEY, LABEL_ATTEMPT, LABEL_EXPERIMENT, LABEL_STAGE

KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
SPEC_FILE = "experiment.yaml"
SPEC_DIR = "/spec"
MANAGED_BY = {"app.kubernetes.io/managed-by": "tratree-operator"}


# Pods lost to preemption, eviction or a node drain (DisruptionTarget) are replaced without counting
# against backoffLimit; a stage that exits 2 (bad input, an ordinary fault: tratree's one-line
# errors) fails its Job at once, since running the same Pod again cannot help.
EXIT_BAD_INPUT = 2
POD_FAILURE_POLICY: dict[str, Any] = {"rules": [
    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    {"action": "FailJob", "onExitCodes": {"containerName": "stage", "operator": "In", "values": [EXIT_BAD_INPUT]}},
]}


def _name(*parts: str, limit: int = 63) -> str:
    """A DNS-1123 name from parts, shortened with a digest when it would be too long."""
    full = "-".join(parts)
    clean = re.sub(r"[^a-z0-9-]", "-", full.lower()).strip("-")
    if len(clean) <= limit:
        return clean
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{clean[: limit - 9].rstrip('-')}-{digest}"


def configmap_name(experiment: str, uid: str) -> str:
    """``<experiment>-spec-<8 hex of the uid>``: an experiment deleted and applied again under the same name
    gets its own ConfigMap instead of taking over the old one, still being garbage-collected (changing its
    owner would need the ``delete`` verb on ConfigMaps, by OwnerReferencesPermissionEnforcement)."""
    return f"{_name(experiment, 'spec', limit=54)}-{hashlib.sha256(uid.encode()).hexdigest()[:8]}"


def job_name(experiment: str, stage: str, key: str, attempt: int, uid: str) -> str:
    """``<experiment>-<stage>-<8 hex>``: the hex covers the plan key, the attempt number and the
    experiment's uid, so an experiment deleted and applied again under the same name never meets
    the old one's Jobs (still being garbage-collected) under its own names."""
    digest = hashlib.sha256(f"{key}/{attempt}/{uid}".encode()).hexdigest()[:8]
    return f"{_name(experiment, stage, limit=54)}-{digest}"


def owner_reference(meta: dict[str, Any]) -> dict[str, Any]:
    """Makes the experiment the owner: deleting it deletes what carries this reference."""
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def spec_text(spec: ExperimentSpec) -> str:
    """The spec as the Jobs read it: a bare spec file, defaults filled in."""
    return yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


def configmap_manifest(meta: dict[str, Any], spec: ExperimentSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(meta["name"], meta["uid"]),
            "namespace": meta["namespace"],
            "labels": {LABEL_EXPERIMENT: meta["name"], **MANAGED_BY},
            "ownerReferences": [owner_reference(meta)],
        },
        "data": {SPEC_FILE: spec_text(spec)},
    }


def _secret_env(secret: str | None, hf_secret: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    env_from = [{"secretRef": {"name": secret}}] if secret else []
    env = []
    if hf_secret:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": hf_secret, "key": "HF_TOKEN"}}})
    return env_from, env


def job_manifest(
    meta: dict[str, Any], spec: ExperimentSpec, stage: Stage, key: str, attempt: int, config: OperatorConfig,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Job that runs ``tratree stage NAME`` for one attempt of one stage; ``inputs`` (input stage ->
    its prefix in the store) are passed as ``--input``."""
    k8s = spec.kubernetes
    res = config.resources_for(stage.kind, k8s.stages.get(stage.kind))
    if not stage.gpu and res.gpus and IMAGE_OF_KIND[stage.kind] != "cpu":
        # a CPU-only stage of a GPU kind (the tokenizer is an "sft" stage): the CPU stages' resources
        cpu = config.resources_for("expert", k8s.stages.get("expert"))
        res = res.model_copy(update={"gpus": 0, "cpu": cpu.cpu, "memory": cpu.memory})
    image = res.image or getattr(config.images, IMAGE_OF_KIND[stage.kind])
    name = job_name(meta["name"], stage.name, key, attempt, meta["uid"])
    labels = {LABEL_EXPERIMENT: meta["name"], LABEL_STAGE: stage.name, LABEL_ATTEMPT: str(attempt), **MANAGED_BY}
    queue = k8s.queue_name or config.queue_name
    if queue:
        labels[KUEUE_QUEUE] = queue
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.cpu:
        requests["cpu"] = res.cpu
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    if res.gpus:
        requests[config.gpu_resource] = limits[config.gpu_resource] = str(res.gpus)
    # a training stage with several GPUs runs one process per GPU (see the README: multi-GPU training)
    multi = (res.gpus or 0) > 1 and stage.kind in ("sft", "dpo")
    launcher = ["accelerate", "launch", "--num_processes", str(res.gpus), "-m", "tratree"] if multi else ["tratree"]
    env_from, env = _secret_env(k8s.s3_secret or config.s3_secret, k8s.hf_token_secret or config.hf_token_secret)
    env += [
        {"name": "TRATREE_WORK", "value": "/work"},
        {"name": "HOME", "value": "/work"},
        {"name": "HF_HOME", "value": "/work/hf"},
    ]
    container: dict[str, Any] = {
        "name": "stage",
        "image": image,
        "imagePullPolicy": config.images.pull_policy,
        "command": [*launcher, "stage", stage.name, "--spec", f"{SPEC_DIR}/{SPEC_FILE}", "--artifacts", spec.artifacts,
                    *(f"--input={n}={p}" for n, p in sorted((inputs or {}).items()))],
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
                         {"name": "work", "mountPath": "/work"},
                         {"name": "shm", "mountPath": "/dev/shm"},
                         *(m.model_dump(by_alias=True, exclude_none=True) for m in k8s.volume_mounts)],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        # a failed stage's last log lines (its one-line error) become the termination message the status shows
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from:
        container["envFrom"] = env_from
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": config.run_as_user, "fsGroup": config.run_as_user,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [
            {"name": "spec", "configMap": {"name": configmap_name(meta["name"], meta["uid"])}},
            {"name": "work", "emptyDir": {}},
            # NCCL and dataloader workers need more shared memory than the default 64 MiB
            {"name": "shm", "emptyDir": {"medium": "Memory"}},
            *(v.model_dump(by_alias=True, exclude_none=True) for v in k8s.volumes),
        ],
    }
    account = k8s.service_account or config.service_account
    if account:
        pod["serviceAccountName"] = account
    priority = k8s.priority_class_name or config.priority_class_name
    if priority:
        pod["priorityClassName"] = priority
    selector = {**config.node_selector, **k8s.node_selector}
    if selector:
        pod["nodeSelector"] = selector
    tolerations = [*config.tolerations, *k8s.tolerations]
    if tolerations:
        pod["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in tolerations]
    job_spec: dict[str, Any] = {
        "backoffLimit": res.backoff_limit,
        "podFailurePolicy": POD_FAILURE_POLICY,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    }
    if stage.shards > 1:
        # one Pod per shard, reading its index from JOB_COMPLETION_INDEX; a failed or preempted shard
        # is retried alone, the finished ones are kept (in the store too)
        del job_spec["backoffLimit"]
        job_spec.update(completionMode="Indexed", completions=stage.shards,
                        parallelism=min(stage.parallelism or stage.shards, stage.shards),
                        backoffLimitPerIndex=res.backoff_limit)
    if res.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = res.active_deadline_seconds
    if k8s.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = k8s.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {ANNOTATION_KEY: key},
            "ownerReferences": [owner_reference(meta)],
        },
        "spec": job_spec,
    }
