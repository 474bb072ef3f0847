"""The checked-in CRD is generated from the spec, is a valid CRD, and validates what the spec accepts."""

from __future__ import annotations

import copy

import kubernetes_validate
import pytest
import yaml
from openapi_schema_validator import OAS30Validator

from tests.conftest import ROOT
from tratree.spec.crd import crd, render
from tratree.spec.experiment import load_experiment, spec_to_manifest

CRD_FILE = ROOT / "crds" / "w2sgexperiments.tratree.io.yaml"


def test_checked_in_crd_matches_the_spec():
    assert CRD_FILE.read_text() == render(), "crds/ drifted from tratree/spec/experiment.py: run `make crds`"


def test_crd_is_a_valid_custom_resource_definition():
    kubernetes_validate.validate(yaml.safe_load(CRD_FILE.read_text()), kubernetes_validate.latest_version(), strict=True)
    names = crd()["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("W2SGExperiment", "w2sgexperiments", ["w2sg"])
    version = crd()["spec"]["versions"][0]
    assert "additionalProperties" not in str(version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["mcts"])
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Stage", "W2SG", "SFT-Strong", "GPU-h", "Age"]


@pytest.fixture(scope="module")
def validator():
    return OAS30Validator(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


@pytest.mark.parametrize("path", [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / "examples/ci/regression.yaml"],
                         ids=lambda p: p.name)
def test_examples_pass_server_side_validation(validator, path):
    manifest = yaml.safe_load(path.read_text())
    validator.validate(manifest["spec"])
    # and with every default written out, as `tratree validate --print` shows them
    validator.validate(spec_to_manifest(load_experiment(path))["spec"])


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        (lambda s: s["tree"].update(similarity=1.5), "similarity"),
        (lambda s: s["mcts"].update(iterations=0), "iterations"),
        (lambda s: s.update(methods=["magic"]), "magic"),
        (lambda s: s["weak"].pop("model"), "model"),
    ],
)
def test_invalid_specs_fail_server_side_validation(validator, patch, where):
    spec = copy.deepcopy(yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())["spec"])
    spec.setdefault("tree", {})
    spec.setdefault("mcts", {})
    patch(spec)
    errors = list(validator.iter_errors(spec))
    assert errors and any(where in str(e) for e in errors)
