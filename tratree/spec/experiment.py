"""The experiment specification: pydantic models of a W2SGExperiment's ``.spec``.

This module is the one source of truth for the experiment file, the CRD's OpenAPI
schema (generated from it) and every stage's settings. YAML keys are camelCase, as in
Kubernetes; Python attributes are snake_case.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from tratree.catalog import SCIWORLD_TASKS, TINY_PRESETS
from tratree.errors import UserError

API_GROUP = "tratree.io"
API_VERSION = f"{API_GROUP}/v1alpha1"
KIND = "W2SGExperiment"

Method = Literal[
    "sft-weak",
    "sft-strong",
    "w2s-mcts",
    "w2s-treedpo",
    "w2s-random-dpo",
    "best-of-n",
    "eto",
    "ceiling",
]
METHODS: tuple[str, ...] = Method.__args__  # type: ignore[attr-defined]

# Kinds of pipeline stage; per-stage Kubernetes settings are keyed by these.
StageKind = Literal[
    "expert",
    "sft",
    "explore",
    "trees",
    "dpo",
    "evaluate",
    "report",
]

# An experiment's name: a DNS-1123 subdomain (what Kubernetes allows for the resource) of at most 63
# characters, since it is also the value of the tratree.io/experiment label on its Jobs and Pods.
# Job and ConfigMap names are derived from it with '.' replaced (tratree_operator.jobs).
EXPERIMENT_NAME = re.compile(r"^(?=.{1,63}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
NAME_RULE = "lowercase letters, digits, '-' and '.', starting and ending alphanumeric, at most 63 characters"


class SpecError(UserError, ValueError):
    """An experiment file that cannot be loaded; the message is one line naming the file and field."""


class SpecModel(BaseModel):
    """Base of every spec model: camelCase keys, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
        allow_inf_nan=False,  # NaN and infinity are bad input in every number of a spec
    )


def _store_uri(value: str) -> str:
    if not (value.startswith("file://") or value.startswith("s3://")):
        raise ValueError("must be a file:// or s3:// URI")
    if value.startswith("s3://") and not value[len("s3://") :].split("/", 1)[0]:
        raise ValueError("an s3:// URI needs a bucket")
    return value


StoreURI = Annotated[str, AfterValidator(_store_uri)]


class EnvironmentSpec(SpecModel):
    """Which agent environment, which of its tasks, and how long an episode may run."""

    name: Literal["textworldexpress", "scienceworld", "alfworld", "webshop"] = "textworldexpress"
    tasks: list[str] = Field(
        default_factory=lambda: ["cookingworld"],
        description="TextWorldExpress game names or ScienceWorld task names; empty means all.",
    )
    game_params: str = Field(
        "",
        description="TextWorldExpress generation parameters, e.g. 'numLocations=1,includeDoors=0'.",
    )
    max_steps: int = Field(30, ge=1, le=1000, description="Step limit of one episode.")
    train_tasks: int | None = Field(None, ge=1, description="Cap on training tasks (None: all).")
    test_tasks: int | None = Field(None, ge=1, description="Cap on held-out tasks (None: all).")
    test_split: Literal["dev", "test"] = "test"
    data_path: str | None = Field(
        None, description="ALFWorld / WebShop data directory, where the environment needs one."
    )
    protocol: Literal["tratree", "eto"] = Field(
        "tratree",
        description="eto: ETO's protocol, as the paper ran it: ETO's step limits (ScienceWorld per task type, "
        "WebShop 10, ALFWorld 40) instead of maxSteps, ScienceWorld's 24 ETO task types with ETO's test "
        "(211) and dev (194) variations, and exploration on the expert file's tasks.",
    )
    icl_example: bool = Field(
        True,
        description="ETO's one-shot in-context example in acting prompts (exploration, evaluation): the "
        "shortest full-score expert trajectory of a training task. Training conversations carry none, as ETO's.",
    )

    @model_validator(mode="after")
    def _eto_tasks(self) -> EnvironmentSpec:
        if self.protocol == "eto" and self.name == "scienceworld":
            outside = [t for t in self.tasks if t not in SCIWORLD_TASKS]
            if outside:
                raise ValueError(f"tasks: {outside[0]!r} is not one of ETO's ScienceWorld task types "
                                 f"({', '.join(SCIWORLD_TASKS)})")
        if self.protocol == "eto" and self.name == "textworldexpress":
            raise ValueError("protocol: ETO has no TextWorldExpress protocol; use 'tratree'")
        return self


class ExpertSpec(SpecModel):
    """Where the expert trajectories D_expert come from."""

    source: Literal["environment", "file"] = "environment"
    path: str | None = Field(None, description="A trajectories JSONL or ETO conversations JSON.")
    format: Literal["trajectories", "eto"] = "trajectories"
    thoughts: Literal["empty", "templated"] = Field(
        "templated", description="Thoughts written for gold actions collected from the environment."
    )
    keep_partial: bool = Field(
        False, description="Keep gold runs of the environment that end below full score (ScienceWorld's gold paths "
        "under ETO's simplifications can); by default they are dropped with a warning naming how many and which "
        "task types, since they are not expert data.",
    )

    @model_validator(mode="after")
    def _path_for_file(self) -> ExpertSpec:
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs a path")
        if self.source == "environment" and self.path:
            raise ValueError(f"path {self.path!r} is given but source is 'environment' (set source: file to use it)")
        return self


class LoraSpec(SpecModel):
    """LoRA adapter settings (paper: r=64, alpha=128)."""

    r: int = Field(64, ge=1, le=4096)
    alpha: int = Field(128, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"], min_length=1,
        description="Module names to adapt; ['all-linear'] adapts every linear layer but the output head.",
    )
    merge: bool = Field(True, description="Merge the adapter into the weights when saving.")


class TrainingSpec(SpecModel):
    """Optimiser settings of one kind of training (paper: AdamW, cosine, batch 32; where the paper is
    silent, the authors' scripts: warmup 0.03, weight decay 0.01)."""

    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(1e-5, gt=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    batch_size: int = Field(32, ge=1, description="Effective batch size (gradient accumulation).")
    micro_batch_size: int = Field(4, ge=1, description="Per-device batch size.")
    max_length: int = Field(4096, ge=16)
    weight_decay: float = Field(0.01, ge=0)

    @model_validator(mode="after")
    def _micro_divides(self) -> TrainingSpec:
        if self.batch_size % self.micro_batch_size:
            raise ValueError("batchSize must be a multiple of microBatchSize")
        return self


class DPOTrainingSpec(TrainingSpec):
    """DPO optimiser settings (paper: lr 2e-5, beta 0.1, batch 32; the authors' scripts: 3 epochs, a
    constant learning rate after warmup)."""

    epochs: float = Field(3.0, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "constant_with_warmup"
    learning_rate: float = Field(2e-5, gt=0, lt=1)
    beta: float = Field(0.1, gt=0)


class ModelSpec(SpecModel):
    """A model: Hugging Face id, local directory, s3:// URI, or tiny:<preset>."""

    model: str = Field(min_length=1)
    lora: LoraSpec | None = None

    @field_validator("model")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value.startswith("tiny:") and value.removeprefix("tiny:") not in TINY_PRESETS:
            raise ValueError(f"unknown tiny preset {value!r} (known: {', '.join('tiny:' + p for p in TINY_PRESETS)})")
        return value

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    sft: TrainingSpec | None = Field(
        None, description="SFT settings of this model, replacing training.sft (e.g. a tiny model from scratch)."
    )
    pretrain: TrainingSpec | None = Field(
        None, description="Language-model pretraining of a tiny: preset on the pretraining corpus (spec.pretraining) "
        "before its SFT; the pretrained model is the base of every later stage of this model.",
    )

    @model_validator(mode="after")
    def _pretrain_tiny(self) -> ModelSpec:
        if self.pretrain is not None and not self.model.startswith("tiny:"):
            raise ValueError(f"pretrain: only a tiny: preset is pretrained here ({self.model!r} comes pretrained)")
        return self


class TrainingSettings(SpecModel):
    sft: TrainingSpec = Field(default_factory=TrainingSpec)
    dpo: DPOTrainingSpec = Field(default_factory=DPOTrainingSpec)


class PolicySpec(SpecModel):
    """How a model is queried while it acts: the generation backend and its limits."""

    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    endpoint: str | None = Field(None, description="Base URL of an OpenAI-compatible server.")
    batch_size: int = Field(16, ge=1, description="Episodes generated for at once.")
    max_new_tokens: int = Field(128, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)

    @model_validator(mode="after")
    def _endpoint_for_openai(self) -> PolicySpec:
        if self.backend == "openai" and not self.endpoint:
            raise ValueError("backend 'openai' needs an endpoint")
        return self


class SamplingSpec(SpecModel):
    temperature: float = Field(ge=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)


def _default_grid() -> list[SamplingSpec]:
    return [
        SamplingSpec(temperature=0.7, top_p=0.9),
        SamplingSpec(temperature=1.0, top_p=0.95),
        SamplingSpec(temperature=0.5, top_p=0.8),
    ]


class ShardedSpec(SpecModel):
    """How an acting stage is split across Pods; what it makes is the same whatever the split."""

    shards: int = Field(1, ge=1, le=1000, description=(
        "Split the stage into this many shards, each a fixed slice of the tasks (task k goes to shard k mod "
        "shards): one Indexed Job on Kubernetes, run in turn by `tratree run`. The merged output is the same "
        "whatever the number."))
    parallelism: int | None = Field(None, ge=1, le=1000, description="Shards that run at once on Kubernetes (None: all).")


class ExplorationSpec(ShardedSpec):
    """Weak-model exploration (and the strong models' own, for ETO): M trajectories per training task over a
    sampling grid."""

    trajectories_per_task: int = Field(6, ge=1, le=1024)
    sampling: list[SamplingSpec] = Field(default_factory=_default_grid, min_length=1)
    seed: int = Field(0, ge=0)
    per_seed: bool = Field(
        False, description="Each training seed also re-draws the weak model's exploration (sampling seed: seed + "
        "the training seed), and so its own trees, pairs and MCTS paths: seeds then vary the weak side's data too, "
        "and the methods' spread over seeds includes that of the trees. false: one exploration for all seeds.",
    )


class TreeSpec(SpecModel):
    """Trajectory-tree merging: xi_sim = 1.0 is exact observation match (no embedding model)."""

    similarity: float = Field(1.0, gt=0, le=1)
    embedding_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    embedding_batch_size: int = Field(64, ge=1)


class TreeDPOSpec(SpecModel):
    """Preference pairs at divergence points (and the random-pair baseline)."""

    reference: Literal["weak-sft", "initial"] = Field(
        "weak-sft", description="DPO reference: the weak SFT model (paper) or the policy's start."
    )
    init: Literal["sft-strong", "best-explored"] = Field(
        "sft-strong",
        description="DPO's starting policy: the strong model's SFT on the expert data (paper, '+SFT -> +TreeDPO') "
        "or an SFT of the strong model on the weak model's best explored trajectory per task.",
    )
    min_score_gap: float = Field(0.0, ge=0, lt=1)
    continuation: Literal["leaf", "first-step"] = "leaf"
    max_pairs_per_tree: int | None = Field(None, ge=1)
    max_pairs_per_node: int | None = Field(
        15, ge=1, description="The widest pairs kept at one divergence point (15: every pair of 6 children, the "
        "paper's M; it binds only at nodes with more children). null: every pair.",
    )
    seed: int = Field(0, ge=0)


class MCTSSpec(SpecModel):
    """Offline MCTS on the static trees (eq. 7)."""

    iterations: int = Field(100, ge=1, le=1_000_000)
    exploration: float = Field(1.41, ge=0)
    seed: int = Field(0, ge=0)
    init: Literal["base", "sft-strong"] = Field(
        "base",
        description="The model SFT on the e* paths starts from: the strong model as it comes (base: the paper's "
        "W2SG-MCTS learns 'under purely weak supervision', Table 1) or its SFT on the expert data (sft-strong: "
        "as TreeDPO's '+SFT -> +TreeDPO', so both ask whether the weak trees add to sft-strong).",
    )


class BestOfNSampling(SamplingSpec):
    temperature: float = Field(0.7, ge=0, le=5)
    top_p: float = Field(0.9, gt=0, le=1)


class EvaluationSpec(ShardedSpec):
    """Held-out evaluation: greedy by default, best-of-N by sampling."""

    temperature: float = Field(0.0, ge=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    best_of_n: int = Field(8, ge=2, le=256, description="N of best-of-N (paper: 8).")
    best_of_n_sampling: BestOfNSampling = Field(default_factory=BestOfNSampling)


class PretrainingSpec(SpecModel):
    """The corpus tiny models are pretrained on: transcripts of heuristic play of dev-split games (disjoint
    from the training and test tasks), the way a real model's pretraining saw text like its tasks."""

    games: int = Field(800, ge=1, le=100_000, description="Dev-split games played, spread over the experiment's games.")
    random_actions: float = Field(
        0.3, ge=0, le=1, description="Chance that a step takes a random valid action instead of the next gold "
        "one (0: gold play only, 1: random play): transcripts with mistakes, recoveries and failures.",
    )
    seed: int = Field(0, ge=0)


class Toleration(SpecModel):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")


def _quantity(value: str | None) -> str | None:
    if value is not None and not _QUANTITY.match(value):
        raise ValueError(f"'{value}' is not a Kubernetes quantity")
    return value


def _number_as_text(value: Any) -> Any:
    # YAML and `helm --set` make `cpu: 2` a number; Kubernetes takes a quantity as int or string
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Quantity = Annotated[str | None, BeforeValidator(_number_as_text), AfterValidator(_quantity),
                     WithJsonSchema({"anyOf": [{"x-kubernetes-int-or-string": True}, {"type": "null"}]})]


class StageResources(SpecModel):
    """Kubernetes settings of one kind of stage; unset fields fall back to the operator's defaults."""

    image: str | None = None
    gpus: int | None = Field(None, ge=0, le=64)
    cpu: Quantity = None
    memory: Quantity = None
    retries: int = Field(1, ge=0, le=20, description="New Jobs after a failed one, with the operator's backoff.")
    backoff_limit: int = Field(0, ge=0, le=20, description="Pod restarts inside one Job (the Job's backoffLimit).")
    active_deadline_seconds: int | None = Field(None, ge=1)


class PVCSource(SpecModel):
    claim_name: str = Field(min_length=1)
    read_only: bool = False


class ConfigMapSource(SpecModel):
    name: str = Field(min_length=1)


class HostPathSource(SpecModel):
    path: str = Field(min_length=1)
    type: str | None = None


class NFSSource(SpecModel):
    server: str = Field(min_length=1)
    path: str = Field(min_length=1)
    read_only: bool = False


# names and paths every stage Pod has already
_RESERVED_VOLUMES = ("spec", "work", "shm")
_RESERVED_MOUNTS = ("/spec", "/work", "/dev/shm")


class Volume(SpecModel):
    """A volume of every stage Pod (data, models, a shared file:// store): one source."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    persistent_volume_claim: PVCSource | None = None
    config_map: ConfigMapSource | None = None
    host_path: HostPathSource | None = Field(None, description="Where the cluster allows hostPath volumes.")
    nfs: NFSSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        sources = [self.persistent_volume_claim, self.config_map, self.host_path, self.nfs]
        if sum(x is not None for x in sources) != 1:
            raise ValueError("give exactly one of persistentVolumeClaim, configMap, hostPath, nfs")
        if self.name in _RESERVED_VOLUMES:
            raise ValueError(f"name {self.name!r} is taken by the stage Pod's own volumes")
        return self


class VolumeMount(SpecModel):
    name: str
    mount_path: str = Field(pattern=r"^/")
    read_only: bool = False
    sub_path: str | None = None

    @model_validator(mode="after")
    def _not_reserved(self) -> VolumeMount:
        path = self.mount_path.rstrip("/") or "/"
        if any(path == r or path.startswith(r + "/") or r.startswith(path + "/") or path == "/" for r in _RESERVED_MOUNTS):
            raise ValueError(f"mountPath {self.mount_path!r} overlaps the stage Pod's own {', '.join(_RESERVED_MOUNTS)}")
        return self


class KubernetesSpec(SpecModel):
    """How the operator runs the stages as Jobs."""

    s3_secret: str | None = Field(None, description="Secret with AWS_* variables for the store.")
    hf_token_secret: str | None = Field(None, description="Secret holding HF_TOKEN.")
    service_account: str | None = None
    queue_name: str | None = Field(None, description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name).")
    priority_class_name: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    ttl_seconds_after_finished: int | None = Field(86400, ge=0)
    stages: dict[StageKind, StageResources] = Field(default_factory=dict)
    volumes: list[Volume] = Field(default_factory=list, description="Volumes of every stage Pod.")
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list, description="Where every stage container mounts them (data, models, a file:// store).")

    @model_validator(mode="after")
    def _mounts_name_volumes(self) -> KubernetesSpec:
        names = [v.name for v in self.volumes]
        if len(set(names)) != len(names):
            raise ValueError("volumes: names must be unique")
        unknown = [m.name for m in self.volume_mounts if m.name not in names]
        if unknown:
            raise ValueError(f"volumeMounts: {unknown[0]!r} is not one of volumes ({', '.join(names) or 'none'})")
        return self

    def mount_of(self, path: str) -> VolumeMount | None:
        """The mount a path in a stage container lies on, if any."""
        for m in self.volume_mounts:
            root = m.mount_path.rstrip("/")
            if path == root or path.startswith(root + "/"):
                return m
        return None


def _unique(values: list[Any]) -> list[Any]:
    if len(set(values)) != len(values):
        raise ValueError("entries must be unique")
    return values


class ExperimentSpec(SpecModel):
    """A whole weak-to-strong experiment: the `.spec` of a W2SGExperiment."""

    environment: EnvironmentSpec = Field(default_factory=EnvironmentSpec)
    expert: ExpertSpec = Field(default_factory=ExpertSpec)
    weak: ModelSpec
    strong: ModelSpec
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    policy: PolicySpec = Field(default_factory=PolicySpec)
    exploration: ExplorationSpec = Field(default_factory=ExplorationSpec)
    tree: TreeSpec = Field(default_factory=TreeSpec)
    tree_dpo: TreeDPOSpec = Field(default_factory=TreeDPOSpec)
    mcts: MCTSSpec = Field(default_factory=MCTSSpec)
    methods: Annotated[list[Method], AfterValidator(_unique)] = Field(
        default_factory=lambda: list(METHODS), min_length=1
    )
    seeds: Annotated[list[int], AfterValidator(_unique)] = Field(
        default_factory=lambda: [0], min_length=1, description="Training seeds of the strong-side methods."
    )
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    pretraining: PretrainingSpec | None = Field(
        None, description="The corpus of weak.pretrain and strong.pretrain (TextWorldExpress only).")
    artifacts: StoreURI = "file://./artifacts"
    suspend: bool = Field(False, description="Create no new Jobs while true.")
    kubernetes: KubernetesSpec = Field(default_factory=KubernetesSpec)


    @model_validator(mode="after")
    def _pretraining_pairs(self) -> ExperimentSpec:
        wanted = [name for name, m in (("weak", self.weak), ("strong", self.strong)) if m.pretrain is not None]
        if self.pretraining is None:
            if wanted:
                raise ValueError(f"{wanted[0]}.pretrain: needs spec.pretraining (the corpus it is pretrained on)")
            return self
        if not wanted:
            raise ValueError("pretraining: set but neither weak.pretrain nor strong.pretrain says how to pretrain")
        if self.environment.name != "textworldexpress":
            raise ValueError(f"pretraining: plays TextWorldExpress games only (environment is {self.environment.name})")
        return self

    def corpus_games(self, split: str) -> int:
        """How many of the split's first tasks the pretraining corpus plays: never trained or evaluated on."""
        return self.pretraining.games if self.pretraining is not None and split == "dev" else 0


class Experiment(BaseModel):
    """An experiment as loaded from a file: its name, namespace and spec."""

    model_config = ConfigDict(extra="forbid")

    name: str
    namespace: str | None = None
    spec: ExperimentSpec


def _error_text(err: ValidationError, prefix: str) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    more = len(err.errors()) - 3
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def parse_experiment(data: Any, source: str = "<spec>", default_name: str = "experiment") -> Experiment:
    """Validate a loaded YAML document: a bare spec, or a full W2SGExperiment manifest."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level")
    name, namespace, body, prefix = default_name, None, data, "spec"
    if "kind" in data or "apiVersion" in data:
        if data.get("kind") != KIND:
            raise SpecError(f"{source}: kind: expected {KIND}, got {data.get('kind')!r}")
        if data.get("apiVersion") != API_VERSION:
            raise SpecError(f"{source}: apiVersion: expected {API_VERSION}, got {data.get('apiVersion')!r}")
        extra = set(data) - {"apiVersion", "kind", "metadata", "spec", "status"}
        if extra:
            raise SpecError(f"{source}: {sorted(extra)[0]}: unknown top-level key")
        meta = data.get("metadata") or {}
        if not isinstance(meta, dict) or not meta.get("name"):
            raise SpecError(f"{source}: metadata.name: required in a {KIND} manifest")
        name, namespace = str(meta["name"]), meta.get("namespace")
        body = data.get("spec")
        if not isinstance(body, dict):
            raise SpecError(f"{source}: spec: expected a mapping")
    if not EXPERIMENT_NAME.match(name):
        raise SpecError(f"{source}: metadata.name: {name!r} is not a valid experiment name ({NAME_RULE})")
    try:
        spec = ExperimentSpec.model_validate(body)
    except ValidationError as err:
        raise SpecError(f"{source}: {_error_text(err, prefix)}") from None
    return Experiment(name=name, namespace=namespace, spec=spec)


def _yaml_loader() -> type:
    """PyYAML's safe loader, refusing a key given twice in one mapping (YAML itself forbids it;
    PyYAML would silently keep the last) and integers too long to convert."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

        def construct_yaml_int(self, node: Any) -> int:
            try:
                return super().construct_yaml_int(node)
            except ValueError:
                raise yaml.constructor.ConstructorError(
                    None, None, f"integer too long ({len(node.value)} digits)", node.start_mark) from None

    StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
    return StrictLoader


def load_experiment(path: str | Path) -> Experiment:
    """Load an experiment file (bare spec or manifest); raise SpecError with a one-line message."""
    import yaml

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise SpecError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text (save the experiment file as UTF-8)") from None
    try:
        data = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    default_name = re.sub(r"[^a-z0-9-]", "-", path.stem.lower()).strip("-") or "experiment"
    return parse_experiment(data, str(path), default_name)


def spec_to_manifest(exp: Experiment) -> dict[str, Any]:
    """The W2SGExperiment manifest of an experiment (camelCase keys, defaults included)."""
    meta: dict[str, Any] = {"name": exp.name}
    if exp.namespace:
        meta["namespace"] = exp.namespace
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": exp.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
