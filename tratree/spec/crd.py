"""The W2SGExperiment CustomResourceDefinition, generated from the pydantic spec and status.

``python -m tratree.spec.crd > crds/w2sgexperiments.tratree.io.yaml`` (``make crds``) writes it; a
test fails when the checked-in file and the models drift apart. Pydantic's JSON schema is turned
into a Kubernetes structural schema: references inlined, ``null`` alternatives made
``nullable``, exclusive bounds in OpenAPI v3.0 form, no titles or defaults (the spec's own
defaults apply when the operator parses it).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from tratree.spec.experiment import API_GROUP, KIND, ExperimentSpec
from tratree.spec.status import ExperimentStatus

PLURAL = "w2sgexperiments"
VERSION = "v1alpha1"

def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _structural(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    node = dict(node)
    variants = node.pop("anyOf", None)
    nullable = False
    if variants is not None:
        others = [v for v in variants if v.get("type") != "null"]
        if len(others) != 1:
            raise ValueError(f"cannot express {variants} in a structural schema")
        inner = others[0]
        if "$ref" in inner:
            inner = defs[inner["$ref"].rsplit("/", 1)[1]]
        node = {**inner, **node}
        nullable = len(others) < len(variants)
    out: dict[str, Any] = {"nullable": True} if nullable else {}
    for key, value in node.items():
        if key in ("title", "default", "propertyNames", "$defs"):
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if "properties" in out:
        # the API server refuses both on one object; unknown fields are pruned, or refused by
        # kubectl's strict field validation, and tratree's own parsing rejects them by name
        out.pop("additionalProperties", None)
    if "enum" in out and "type" not in out:
        out["type"] = "string" if all(isinstance(v, str) for v in out["enum"]) else "number"
    return out


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True)
    return _structural(raw, raw.get("$defs", {}))


def spec_schema() -> dict[str, Any]:
    """The OpenAPI v3 schema of ``.spec``."""
    return _schema_of(ExperimentSpec)


def status_schema() -> dict[str, Any]:
    """The OpenAPI v3 schema of ``.status``."""
    return _schema_of(ExperimentStatus)


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": KIND.lower(),
                      "shortNames": ["w2sg"], "categories": ["tratree"]},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage"},
                    {"name": "W2SG", "type": "string", "jsonPath": ".status.w2sgReward",
                     "description": "best weak-to-strong method's average reward"},
                    {"name": "SFT-Strong", "type": "string", "jsonPath": ".status.sftStrongReward"},
                    {"name": "GPU-h", "type": "number", "jsonPath": ".status.gpuHours",
                     "description": "GPU-hours the stages' Pods used"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A weak-to-strong generalization experiment run by the tratree operator.",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                    "required": ["spec"],
                }},
            }],
        },
    }


def render() -> str:
    import yaml

    header = "# Generated from tratree/spec/experiment.py and status.py by `make crds` (python -m tratree.spec.crd). Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


if __name__ == "__main__":
    print(render(), end="")
