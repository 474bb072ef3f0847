"""``tratree submit``: create a W2SGExperiment on a cluster and, with ``--wait``, follow it to the end.

Credentials come from the in-cluster service account or the kubeconfig (``$KUBECONFIG``),
the same as kubectl's. Following is by polling the resource, so a dropped connection or an
operator restart costs nothing but a late line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tratree.spec.crd import PLURAL, VERSION
from tratree.spec.experiment import API_GROUP, Experiment, spec_to_manifest


class SubmitError(RuntimeError):
    """The experiment could not be created or read: no cluster, no permission, a name taken."""


def _api() -> tuple[Any, str]:
    """A CustomObjectsApi and the kubeconfig context's namespace."""
    from kubernetes import client, config

    namespace = "default"
    try:
        config.load_incluster_config()
        with contextlib.suppress(OSError):  # a Pod without its service account's namespace file
            namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text().strip() or namespace
    except config.ConfigException:
        try:
            config.load_kube_config()
            _, active = config.list_kube_config_contexts()
            namespace = (active or {}).get("context", {}).get("namespace") or namespace
        except (config.ConfigException, OSError, TypeError, ValueError) as err:  # ValueError: bad base64 in it
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SubmitError(f"no usable Kubernetes configuration (KUBECONFIG or ~/.kube/config): {detail}") from None
    return client.CustomObjectsApi(), namespace


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args, **kwargs)
    except ApiException as err:
        import json

        try:
            message = json.loads(err.body).get("message") or err.reason
        except (TypeError, ValueError):
            message = err.reason
        raise SubmitError(f"{what}: {err.status} {message}") from None
    except HTTPError as err:
        raise SubmitError(f"{what}: cannot reach the Kubernetes API: {err}") from None
    except ValueError as err:  # an answer that is not a Kubernetes API response (a proxy's page, say)
        raise SubmitError(f"{what}: the API server's answer cannot be read: {str(err)[:200]}") from None


def submit(exp: Experiment, namespace: str | None = None) -> tuple[Any, str]:
    """Create the resource; returns (api, namespace)."""
    api, default_ns = _api()
    ns = namespace or exp.namespace or default_ns
    body = spec_to_manifest(exp)
    body["metadata"]["namespace"] = ns
    _call(f"create w2sg/{exp.name} in {ns}", api.create_namespaced_custom_object, API_GROUP, VERSION, ns, PLURAL, body)
    return api, ns


def transitions(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Lines for what changed between two statuses: stage states, then the phase."""
    lines = []
    before = old.get("stages") or {}
    for name, entry in (new.get("stages") or {}).items():
        prev = before.get(name) or {}
        if entry.get("state") != prev.get("state") and entry.get("state") != "Pending":
            extra = f" ({entry['job']})" if entry.get("state") == "Running" and entry.get("job") else ""
            if entry.get("message") and entry.get("state") in ("Failed", "Pending"):
                extra = f": {entry['message']}"
            lines.append(f"{name}: {entry.get('state')}{extra}")
        elif entry.get("state") == "Pending" and entry.get("message") and entry.get("message") != prev.get("message"):
            lines.append(f"{name}: {entry['message']}")
    if new.get("phase") and new.get("phase") != old.get("phase"):
        lines.append(f"phase: {new['phase']}")
    return lines


def wait(api: Any, namespace: str, name: str, timeout: float, on_line: Callable[[str], None],
         poll: float = 1.0) -> dict[str, Any] | None:
    """Follow the experiment until Succeeded or Failed; its status then, or None on timeout."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while True:
        obj = _call(f"read w2sg/{name}", api.get_namespaced_custom_object, API_GROUP, VERSION, namespace, PLURAL, name)
        status = obj.get("status") or {}
        current = status.get("observedGeneration") == obj["metadata"].get("generation")
        if current:
            for line in transitions(seen, status):
                on_line(line)
            seen = status
            if status.get("phase") in ("Succeeded", "Failed"):
                return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
