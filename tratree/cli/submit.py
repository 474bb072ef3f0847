"""``tratree submit``: create a W2SGExperiment on a cluster and, with ``--wait``, follow it to the end.

Credentials come from the in-cluster service account or the kubeconfig (``$KUBECONFIG``),
the same as kubectl's. Following is by polling the resource, so a dropped connection or an
operator restart costs nothing but a late line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tratree.cli.args import EXIT_BAD_INPUT, CLIError, add_command, experiment, poll_interval, positive_float

if TYPE_CHECKING:
    from tratree.spec.experiment import Experiment


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


def _resource() -> tuple[str, str, str]:
    """The resource's API group, version and plural; from the spec, imported (with pydantic) only to call a cluster."""
    from tratree.spec.crd import PLURAL, VERSION
    from tratree.spec.experiment import API_GROUP

    return API_GROUP, VERSION, PLURAL


def submit(exp: Experiment, namespace: str | None = None) -> tuple[Any, str]:
    """Create the resource; returns (api, namespace)."""
    from tratree.spec.experiment import spec_to_manifest

    api, default_ns = _api()
    ns = namespace or exp.namespace or default_ns
    group, version, plural = _resource()
    body = spec_to_manifest(exp)
    body["metadata"]["namespace"] = ns
    _call(f"create w2sg/{exp.name} in {ns}", api.create_namespaced_custom_object, group, version, ns, plural, body)
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
    group, version, plural = _resource()
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while True:
        obj = _call(f"read w2sg/{name}", api.get_namespaced_custom_object, group, version, namespace, plural, name)
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


def cmd_submit(args: argparse.Namespace) -> int:
    from datetime import datetime

    exp = experiment(args.experiment)
    if args.name:
        from tratree.spec.experiment import EXPERIMENT_NAME, NAME_RULE

        if not EXPERIMENT_NAME.match(args.name):
            raise CLIError(f"--name: {args.name!r} is not a valid experiment name ({NAME_RULE})")
        exp = exp.model_copy(update={"name": args.name})
    try:
        import kubernetes  # noqa: F401 - only to say, in one line, that it is missing
    except ImportError as err:
        raise CLIError(f"tratree submit needs the Kubernetes client ({err.name}): pip install 'tratree[submit]'") from None
    try:
        api, ns = submit(exp, args.namespace)
        print(f"created w2sg/{exp.name} in namespace {ns}", file=sys.stderr)
        if not args.wait:
            print(f"follow it: kubectl get w2sg {exp.name} -n {ns} -w", file=sys.stderr)
            return 0

        def show(line: str) -> None:
            print(f"[{datetime.now().strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

        status = wait(api, ns, exp.name, args.timeout, show, poll=args.poll)
    except SubmitError as err:
        raise CLIError(str(err)) from None
    if status is None:
        print(f"tratree: error: w2sg/{exp.name} did not finish within {args.timeout:g}s", file=sys.stderr)
        return EXIT_BAD_INPUT
    if status.get("results"):
        _results_table(status["results"])
        if args.output:
            from tratree.store.atomic import atomic_write

            with atomic_write(args.output) as fh:
                json.dump(status["results"], fh, indent=2)
    if status["phase"] == "Failed":
        failed = next((c for c in status.get("conditions") or [] if c.get("type") in ("Failed",)), {})
        print(f"tratree: w2sg/{exp.name} failed: {failed.get('message', '')}", file=sys.stderr)
        return 1
    return 0


def _results_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="results (average reward and success rate ×100)")
    for col in ("method", "average reward", "success rate", "seeds"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for method, row in results.items():
        table.add_row(method, f"{row.get('averageReward', 0):.1f} ± {row.get('averageRewardStd', 0):.1f}",
                      f"{row.get('successRate', 0):.1f}", str(row.get("seeds", "")))
    Console().print(table)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's commands to the `tratree` parser."""
    sp = add_command(sub, "submit", cmd_submit, "create the W2SGExperiment on a cluster; --wait follows it to the end")
    sp.add_argument("experiment")
    sp.add_argument("-n", "--namespace", help="default: the manifest's, else the kubeconfig context's")
    sp.add_argument("--name", help="metadata.name to use instead of the file's (unique names for CI runs)")
    sp.add_argument("--wait", action="store_true", help="stream stage transitions; exit 0 Succeeded, 1 Failed")
    sp.add_argument("--timeout", type=positive_float, default=86400.0, help="seconds --wait waits (exit 2 after)")
    sp.add_argument("--poll", type=poll_interval, default=2.0, help="seconds between reads of the resource (>= 0.1)")
    sp.add_argument("-o", "--output", help="with --wait: write the results table here (JSON)")
