"""Whether any Node could ever hold a stage's Pod: a request larger than every node is a failure, a busy
cluster is not.

The scheduler says ``Unschedulable`` both when the GPUs are taken (wait: they free up) and when no node
has that many (fail: waiting cannot help). This tells the two apart from the Nodes' allocatable, node
selector and taints, the way the scheduler's fit filters read them. Nodes come and go (an autoscaler, a
node back from repair), so the answer is "no node today", and it is given only from a non-empty list of
Nodes: knowing of none is not knowing.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

# Taints the node lifecycle sets and lifts by itself (not ready, unreachable, cordoned, under
# pressure): a node under one of them counts, since it will take Pods again.
TRANSIENT_TAINTS = ("node.kubernetes.io/", "node.cloudprovider.kubernetes.io/uninitialized")


_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))(?:([KMGTPE]i)|([numkMGTPE]?)|[eE]([+-]?\d+))")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes resource quantity ("500m", "16Gi", "1e3", 2) as a number; ValueError when it is none."""
    if isinstance(value, int | float | Decimal):
        return Decimal(str(value))
    match = _QUANTITY.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number, binary, decimal, exponent = match.groups()
    try:
        amount = Decimal(number)
    except InvalidOperation as err:
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from err
    if binary:
        return amount * 1024 ** _BINARY[binary]
    return amount.scaleb(int(exponent) if exponent is not None else _DECIMAL[decimal])


def _quantity(value: Any) -> Decimal:
    try:
        return parse_quantity(value)
    except ValueError:
        return Decimal(0)


def pod_requests(pod_spec: dict[str, Any]) -> dict[str, Decimal]:
    """What the Pod asks of a node: its containers' requests summed (a limit without a request is the
    request, as the apiserver defaults it), or its largest init container's where that is more."""
    def of(container: dict[str, Any]) -> dict[str, Decimal]:
        res = container.get("resources") or {}
        return {k: _quantity(v) for k, v in {**(res.get("limits") or {}), **(res.get("requests") or {})}.items()}

    total: dict[str, Decimal] = {}
    for container in pod_spec.get("containers") or []:
        for k, v in of(container).items():
            total[k] = total.get(k, Decimal(0)) + v
    for container in pod_spec.get("initContainers") or []:
        for k, v in of(container).items():
            total[k] = max(total.get(k, Decimal(0)), v)
    return {k: v for k, v in total.items() if v > 0}


def _tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol["key"] == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _eligible(node: dict[str, Any], pod_spec: dict[str, Any]) -> bool:
    """Whether the Pod's node selector and tolerations let it onto the node (its resources aside)."""
    labels = node.get("metadata", {}).get("labels") or {}
    if any(labels.get(k) != v for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    tolerations = pod_spec.get("tolerations") or []
    return all(_tolerates(tolerations, t) for t in node.get("spec", {}).get("taints") or []
               if t.get("effect") in ("NoSchedule", "NoExecute") and not t.get("key", "").startswith(TRANSIENT_TAINTS))


def _show(resource: str, amount: Decimal) -> str:
    if resource == "memory" and amount >= 2 ** 30:
        return f"{amount / 2 ** 30:g}Gi memory"
    return f"{amount.normalize():f} {resource}"


def no_node_fits(pod_spec: dict[str, Any], nodes: list[dict[str, Any]]) -> str | None:
    """Why no Node today could ever run a Pod of this spec (even with every other Pod gone); None when one
    could, or when no Node is known."""
    if not nodes:
        return None
    want = pod_requests(pod_spec)
    eligible = [n for n in nodes if _eligible(n, pod_spec)]
    if not eligible:
        what = ", ".join(f"{k}={v}" for k, v in sorted((pod_spec.get("nodeSelector") or {}).items()))
        return (f"no node today matches its node selector ({what}) and tolerations" if what
                else "no node today has only taints its tolerations allow")

    def allocatable(node: dict[str, Any], resource: str) -> Decimal:
        return _quantity(((node.get("status") or {}).get("allocatable") or {}).get(resource, 0))

    for node in eligible:
        if all(allocatable(node, k) >= v for k, v in want.items()):
            return None
    for resource, amount in sorted(want.items()):
        best = max(eligible, key=lambda n: allocatable(n, resource))
        if allocatable(best, resource) < amount:
            return (f"it requests {_show(resource, amount)} and no node today has that much allocatable "
                    f"(the most: {_show(resource, allocatable(best, resource))}, on {best['metadata']['name']})")
    asked = ", ".join(_show(k, v) for k, v in sorted(want.items()))
    return f"no node today has {asked} allocatable together"
