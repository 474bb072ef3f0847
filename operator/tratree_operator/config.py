"""The operator's own settings: default stage images and resources, secrets, retry backoff.

They come from a YAML file (the Helm chart mounts one from its ConfigMap) named by
``TRATREE_OPERATOR_CONFIG``; every field has a default, so a bare ``python -m tratree_operator``
runs. An experiment's ``spec.kubernetes`` overrides them per experiment.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from tratree.spec.experiment import ExperimentSpec, StageKind, StageResources, Toleration, Volume

# Which image runs which kind of stage: tree work and reports need no GPU stack.
IMAGE_OF_KIND: dict[StageKind, str] = {
    "expert": "cpu",
    "trees": "cpu",
    "report": "cpu",
    "sft": "trainer",
    "dpo": "trainer",
    "explore": "explorer",
    "evaluate": "explorer",
}


class ConfigError(ValueError):
    """The operator's configuration file is missing or invalid."""


class Settings(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Images(Settings):
    cpu: str = "ghcr.io/tratree/tratree-cpu:0.1.0"
    trainer: str = "ghcr.io/tratree/tratree-trainer:0.1.0"
    explorer: str = "ghcr.io/tratree/tratree-explorer:0.1.0"
    pull_policy: str = "IfNotPresent"


def _default_resources() -> dict[StageKind, StageResources]:
    cpu = StageResources(cpu="1", memory="4Gi", gpus=0)
    gpu = StageResources(cpu="8", memory="64Gi", gpus=1)
    return {"expert": cpu, "trees": cpu, "report": cpu, "sft": gpu, "dpo": gpu, "explore": gpu, "evaluate": gpu}


class Policy(Settings):
    """What an experiment may choose for its Pods in ``spec.kubernetes``. An empty list allows any
    value; the operator's own defaults (this file) are always allowed."""

    image_prefixes: list[str] = Field(default_factory=list, description="Allowed stage image prefixes.")
    service_accounts: list[str] = Field(default_factory=list)
    priority_classes: list[str] = Field(default_factory=list)
    secrets: list[str] = Field(default_factory=list, description="Secrets an experiment may name (s3Secret, hfTokenSecret).")
    node_selectors: bool = Field(True, description="Whether an experiment may set its own node selector.")
    tolerations: bool = Field(True, description="Whether an experiment may add tolerations.")
    # a stage Pod is made by the operator, so a volume source is the operator's power lent to whoever may
    # create a W2SGExperiment: the node's files (hostPath) and other hosts' shares (NFS) only where allowed
    host_path_prefixes: list[str] = Field(
        default_factory=list, description="Node paths experiments may mount as hostPath volumes (a path and what "
        "is under it); none: hostPath volumes are refused.")
    nfs_servers: list[str] = Field(
        default_factory=list, description="NFS servers experiments may mount; none: NFS volumes are refused.")


class OperatorConfig(Settings):
    """Defaults for every experiment the operator runs."""

    images: Images = Field(default_factory=Images)
    resources: dict[StageKind, StageResources] = Field(default_factory=_default_resources)
    s3_secret: str | None = Field(None, description="Secret with AWS_* variables, when the spec names none.")
    hf_token_secret: str | None = None
    service_account: str | None = Field(None, description="Service account of the stage Pods.")
    queue_name: str | None = None
    priority_class_name: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    gpu_resource: str = "nvidia.com/gpu"
    kueue: bool = Field(False, description="Read Kueue's Workloads (list, by the Job's uid) to say why a suspended "
                        "stage Job waits; the chart's kueue.enabled grants the RBAC.")
    retry_backoff_seconds: float = Field(10.0, gt=0, description="First wait before a new attempt; doubles.")
    retry_backoff_max_seconds: float = Field(300.0, gt=0)
    resync_seconds: float = Field(60.0, gt=0, description="Reconcile unfinished experiments at least this often.")
    relist_seconds: float = Field(
        3600.0, gt=0, description="List an unfinished experiment's Jobs and Pods from the apiserver again this often "
        "(between lists, its watches keep them, and a watch that restarts lists everything anew).")
    start_timeout_seconds: float = Field(
        600.0, gt=0, description="A stage Pod that cannot start for its own reasons (an image that will not pull, a "
        "missing Secret) this long fails its attempt. Waiting for resources is not such a reason.")
    queue_timeout_seconds: float | None = Field(
        None, gt=0, description="A stage Pod the scheduler has found no room for this long fails its attempt; unset: "
        "it waits as long as the cluster is busy.")
    fail_unfit_requests: bool = Field(
        True, description="Fail a stage at once when no node today could ever hold its Pod (more GPUs, memory or CPU "
        "than any node's allocatable, a node selector no node matches). Off for clusters whose autoscaler adds such "
        "nodes on demand.")
    run_as_user: int = 1000
    policy: Policy = Field(default_factory=Policy, description="What experiments may choose (see Policy).")
    namespace_policies: dict[str, Policy] = Field(
        default_factory=dict, description="A namespace's own policy, in place of `policy` there.")

    def policy_for(self, namespace: str) -> Policy:
        return self.namespace_policies.get(namespace, self.policy)

    def violations(self, spec: ExperimentSpec, namespace: str) -> list[str]:
        """What the experiment's ``spec.kubernetes`` chooses that the namespace's policy does not allow."""
        policy, k8s = self.policy_for(namespace), spec.kubernetes
        out = []

        def check(field: str, value: str | None, allowed: list[str], default: str | None, match=str.__eq__) -> None:
            if value and allowed and value != default and not any(match(value, a) for a in allowed):
                out.append(f"spec.kubernetes.{field}: {value!r} is not allowed here (allowed: {', '.join(allowed)})")

        check("serviceAccount", k8s.service_account, policy.service_accounts, self.service_account)
        check("priorityClassName", k8s.priority_class_name, policy.priority_classes, self.priority_class_name)
        check("s3Secret", k8s.s3_secret, policy.secrets, self.s3_secret)
        check("hfTokenSecret", k8s.hf_token_secret, policy.secrets, self.hf_token_secret)
        for kind, res in sorted(k8s.stages.items()):
            check(f"stages.{kind}.image", res.image, policy.image_prefixes, None, str.startswith)
        if k8s.node_selector and not policy.node_selectors:
            out.append("spec.kubernetes.nodeSelector: experiments may not choose their nodes here")
        if k8s.tolerations and not policy.tolerations:
            out.append("spec.kubernetes.tolerations: experiments may not add tolerations here")
        out += volume_violations(k8s.volumes, policy)
        return out

    def resources_for(self, kind: StageKind, override: StageResources | None) -> StageResources:
        """The stage kind's resources: the spec's fields where set, the operator's otherwise."""
        base = self.resources.get(kind, StageResources())
        if override is None:
            return base
        return base.model_copy(update=override.model_dump(exclude_unset=True))

    def backoff(self, failures: int) -> float:
        """Seconds to wait before the attempt after ``failures`` failed ones."""
        return min(self.retry_backoff_max_seconds, self.retry_backoff_seconds * 2 ** max(0, failures - 1))


def _under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or inside it, after ``..`` and repeated slashes are resolved."""
    path, prefix = (posixpath.normpath("/" + p.lstrip("/")) for p in (path, prefix))
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def volume_violations(volumes: list[Volume], policy: Policy) -> list[str]:
    """The volumes whose source the policy does not allow: hostPath outside ``hostPathPrefixes``, NFS from a
    server not in ``nfsServers``. PersistentVolumeClaims and ConfigMaps are the namespace's own: allowed."""
    out = []
    for i, volume in enumerate(volumes):
        where = f"spec.kubernetes.volumes[{i}]"
        if volume.host_path is not None and not any(_under(volume.host_path.path, p) for p in policy.host_path_prefixes):
            allowed = (f"allowed: {', '.join(policy.host_path_prefixes)} and what is under them"
                       if policy.host_path_prefixes else "hostPath volumes are refused; the chart's "
                       "policy.hostPathPrefixes allows node paths")
            out.append(f"{where}.hostPath.path: {volume.host_path.path!r} is not allowed here ({allowed})")
        if volume.nfs is not None and volume.nfs.server not in policy.nfs_servers:
            allowed = (f"allowed: {', '.join(policy.nfs_servers)}" if policy.nfs_servers
                       else "NFS volumes are refused; the chart's policy.nfsServers allows servers")
            out.append(f"{where}.nfs.server: {volume.nfs.server!r} is not allowed here ({allowed})")
    return out


def load_config(path: str | os.PathLike[str] | None = None) -> OperatorConfig:
    """The configuration from ``path`` or ``$TRATREE_OPERATOR_CONFIG``; defaults when neither is set."""
    path = path or os.environ.get("TRATREE_OPERATOR_CONFIG")
    if not path:
        return OperatorConfig()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return OperatorConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {loc}: {first['msg']}") from None
