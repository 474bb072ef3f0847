"""The experiment file: manifests and bare specs load alike; bad ones fail naming the field."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from tests.conftest import ROOT
from tratree.spec.experiment import SpecError, load_experiment, parse_experiment, spec_to_manifest


def write(tmp_path, text: str):
    p = tmp_path / "exp.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_quickstart_is_a_valid_manifest_with_the_arms_that_train_at_its_size():
    exp = load_experiment(ROOT / "examples" / "quickstart.yaml")
    assert exp.name == "quickstart"
    assert exp.spec.environment.name == "textworldexpress"
    assert exp.spec.weak.model == "tiny:weak" and exp.spec.strong.model == "tiny:strong"
    # eto and ceiling would get a pair or two on 16 training tasks: left out, and the file says why
    assert set(exp.spec.methods) == {"sft-weak", "sft-strong", "w2s-mcts", "w2s-treedpo", "w2s-random-dpo", "best-of-n"}
    assert "eto and ceiling are left out" in (ROOT / "examples" / "quickstart.yaml").read_text()
    # a DPO batch of one: about ten tree pairs make ~20 optimizer steps over 2 epochs, not 2 or 3
    assert exp.spec.training.dpo.batch_size == 1 and exp.spec.tree_dpo.max_pairs_per_tree is None
    assert exp.spec.artifacts.startswith("file://")


@pytest.mark.parametrize("path", [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / "examples/ci/regression.yaml"],
                         ids=lambda p: p.name)
def test_every_example_validates_and_what_validate_prints_loads_back_to_it(path, tmp_path):
    exp = load_experiment(path)
    printed = tmp_path / "printed.yaml"
    printed.write_text(yaml.safe_dump(spec_to_manifest(exp), sort_keys=False))
    assert load_experiment(printed).spec == exp.spec  # `tratree validate --print` shows the file, defaults filled in


def test_bare_spec_and_manifest_load_to_the_same_spec(tmp_path):
    body = """
    weak: {model: tiny:weak}
    strong: {model: tiny:strong}
    mcts: {iterations: 50}
    """
    bare = load_experiment(write(tmp_path, body))
    manifest = write(tmp_path, "apiVersion: tratree.io/v1alpha1\nkind: W2SGExperiment\nmetadata: {name: x}\nspec:\n"
                     + textwrap.indent(textwrap.dedent(body), "  "))
    assert load_experiment(manifest).spec == bare.spec
    assert bare.name == "exp"  # a bare spec is named after its file


def test_defaults_are_the_papers_settings():
    spec = parse_experiment({"weak": {"model": "w", "lora": {}}, "strong": {"model": "s"}}).spec
    assert (spec.weak.lora.r, spec.weak.lora.alpha) == (64, 128)
    assert spec.training.sft.learning_rate == 1e-5 and spec.training.sft.lr_scheduler == "cosine"
    assert spec.training.sft.batch_size == 32
    assert spec.training.dpo.learning_rate == 2e-5 and spec.training.dpo.beta == 0.1
    assert spec.tree.similarity == 1.0 and spec.tree_dpo.reference == "weak-sft"
    assert spec.exploration.trajectories_per_task == 6


def test_unknown_field_is_rejected_naming_its_path(tmp_path):
    p = write(tmp_path, """
    weak: {model: w}
    strong: {model: s}
    mcts: {iterations: 10, explorationn: 2}
    """)
    with pytest.raises(SpecError, match=r"exp.yaml: spec\.mcts\.explorationn: Extra inputs are not permitted"):
        load_experiment(p)


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ("tree: {similarity: 1.5}", r"spec\.tree\.similarity"),
        ("exploration: {trajectoriesPerTask: 0}", r"spec\.exploration\.trajectoriesPerTask"),
        ("treeDpo: {minScoreGap: -0.1}", r"spec\.treeDpo\.minScoreGap"),
        ("methods: [sft-weak, magic]", r"spec\.methods\.1"),
        ("methods: [sft-weak, sft-weak]", r"spec\.methods: entries must be unique"),
        ("artifacts: /tmp/x", r"spec\.artifacts: must be a file:// or s3:// URI"),
        ("training: {sft: {batchSize: 30, microBatchSize: 4}}", r"spec\.training\.sft: batchSize must be a multiple"),
        ("kubernetes: {stages: {sft: {memory: lots}}}", r"spec\.kubernetes\.stages\.sft\.memory"),
        ("policy: {backend: openai}", r"spec\.policy: backend 'openai' needs an endpoint"),
        ("training: {sft: {epochs: .inf}}", r"spec\.training\.sft\.epochs: Input should be a finite number"),
        ("mcts: {exploration: .nan}", r"spec\.mcts\.exploration: Input should be a finite number"),
        ("treeDpo: {minScoreGap: .nan}", r"spec\.treeDpo\.minScoreGap"),
    ],
)
def test_out_of_range_values_are_rejected_naming_the_field(tmp_path, patch, where):
    p = write(tmp_path, "weak: {model: w}\nstrong: {model: s}\n" + patch + "\n")
    with pytest.raises(SpecError, match=where) as info:
        load_experiment(p)
    assert "\n" not in str(info.value)


def test_missing_models_and_bad_manifests(tmp_path):
    with pytest.raises(SpecError, match=r"spec\.weak: Field required"):
        load_experiment(write(tmp_path, "strong: {model: s}\n"))
    with pytest.raises(SpecError, match="kind: expected W2SGExperiment"):
        load_experiment(write(tmp_path, "apiVersion: tratree.io/v1alpha1\nkind: Pod\nmetadata: {name: x}\nspec: {}\n"))
    with pytest.raises(SpecError, match=r"metadata\.name"):
        load_experiment(write(tmp_path, "apiVersion: tratree.io/v1alpha1\nkind: W2SGExperiment\nspec: {}\n"))
    for bad in ("Bad_Name", "a" * 64, "-x", "x.", "a..b"):
        with pytest.raises(SpecError, match="is not a valid experiment name"):
            load_experiment(write(tmp_path, "apiVersion: tratree.io/v1alpha1\nkind: W2SGExperiment\n"
                                  f"metadata: {{name: '{bad}'}}\nspec: {{weak: {{model: w}}, strong: {{model: s}}}}\n"))
    # any name Kubernetes allows for the resource and a label allows as a value, dots included
    exp = load_experiment(write(tmp_path, "apiVersion: tratree.io/v1alpha1\nkind: W2SGExperiment\n"
                                "metadata: {name: webshop.llama2-v1}\nspec: {weak: {model: w}, strong: {model: s}}\n"))
    assert exp.name == "webshop.llama2-v1"
    with pytest.raises(SpecError, match=r"exp.yaml:\d+: not valid YAML"):
        load_experiment(write(tmp_path, "weak: {model: w}\nstrong: [unclosed\n"))
    with pytest.raises(SpecError, match="cannot read"):
        load_experiment(tmp_path / "missing.yaml")


def test_manifest_round_trips_through_spec_to_manifest():
    exp = load_experiment(ROOT / "examples" / "quickstart.yaml")
    again = parse_experiment(spec_to_manifest(exp))
    assert again == exp
