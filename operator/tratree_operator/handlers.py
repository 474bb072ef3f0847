"""The kopf handlers: each one keeps the watch-fed views and wakes the experiment's reconcile.

Run with ``python -m tratree_operator`` (production settings, see ``__main__``) or
``kopf run -m tratree_operator.handlers --all-namespaces``. kopf keeps its own bookkeeping in
annotations under ``tratree.io/``, never in ``.status``, whose schema is the operator's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from tratree.spec.crd import PLURAL, VERSION
from tratree.spec.experiment import API_GROUP
from tratree_operator import metrics
from tratree_operator.config import load_config
from tratree_operator.controller import Controller
from tratree_operator.kube import Kube, login
from tratree_operator.types import LABEL_EXPERIMENT

EXPERIMENTS = (API_GROUP, VERSION, PLURAL)


def configure(settings: kopf.OperatorSettings) -> None:
    """Settings for long runs on a shared cluster."""
    # the apiserver ends watches itself; the client side gives up a little later
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.error_backoffs = [1, 2, 5, 10, 20]
    # the operator posts its own Events; kopf's per-handler log Events would only add noise
    settings.posting.enabled = False
    # the apiserver filters the Job and Pod streams: only those of experiments, not every one in the cluster
    for group, plural in (("batch", "jobs"), ("v1", "pods")):
        settings.watching.label_selectors[group, plural] = LABEL_EXPERIMENT


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    settings.peering.lifetime = int(getattr(memo, "peering_lifetime", 60))
    if getattr(memo, "controller", None) is None:
        # a kubeconfig's exec plugin may take seconds: not on the event loop
        memo.controller = Controller(Kube(await asyncio.to_thread(login)), load_config())
        metrics.serve(int(getattr(memo, "metrics_port", 9090)))


# kopf's watches log in as the operator's own calls do (kopf's default service-account login asks for
# kubernetes.default.svc, a name only cluster DNS knows); kopf calls this again when a token is refused
@kopf.on.login()
def credentials(logger: kopf.Logger, **_: Any) -> kopf.ConnectionInfo:
    return login(logger)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await memo.controller.stop()
    await memo.controller.kube.close()


# Watching events only: kopf keeps no bookkeeping of its own on the experiment (no copy of the
# spec in a last-handled-configuration annotation, no finalizer, no progress patches); the
# reconciler reads the object and decides. Status writes come back as events too: the controller
# wakes for a new generation or new annotations (a retry), not for its own writes.
@kopf.on.event(*EXPERIMENTS)
async def experiment_event(event: dict[str, Any], name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    if event.get("type") == "DELETED":
        memo.controller.views.remove("experiments", event["object"])
        memo.controller.forget(namespace, name)  # its Jobs and ConfigMap go by owner references
        return
    if event.get("type") is None:
        memo.controller.views.watch_listed()
    memo.controller.views.put("experiments", event["object"])
    meta = event["object"].get("metadata") or {}
    memo.controller.notice(namespace, name, meta.get("generation"), dict(meta.get("annotations") or {}))


# A Job's and its Pods' changes come in bursts (created, started by the Job controller, its Pod scheduled,
# running, ended): a delay lets one pass see a burst whole. At 0.2 s a stage took a status write for
# nearly each (41 per experiment of 24 stages in the real control plane's bench), at 1 s 28.
CHILD_WAKE_DELAY = 1.0


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_EXPERIMENT: kopf.PRESENT})
async def job_changed(event: dict[str, Any], labels: dict[str, str], namespace: str, memo: kopf.Memo,
                      **_: Any) -> None:
    _child_changed("jobs", event, memo)
    memo.controller.wake(namespace, labels[LABEL_EXPERIMENT], CHILD_WAKE_DELAY)


@kopf.on.event("", "v1", "pods", labels={LABEL_EXPERIMENT: kopf.PRESENT})
async def pod_changed(event: dict[str, Any], labels: dict[str, str], namespace: str, memo: kopf.Memo,
                      **_: Any) -> None:
    _child_changed("pods", event, memo)
    memo.controller.wake(namespace, labels[LABEL_EXPERIMENT], CHILD_WAKE_DELAY)


# Nodes say which requests no node could ever meet (a stage then fails at once instead of waiting).
@kopf.on.event("", "v1", "nodes")
async def node_changed(event: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    _child_changed("nodes", event, memo)


def _child_changed(kind: str, event: dict[str, Any], memo: kopf.Memo) -> None:
    if event.get("type") is None and kind != "nodes":
        memo.controller.views.watch_listed()
    if event.get("type") == "DELETED":
        memo.controller.views.remove(kind, event["object"])
    else:
        memo.controller.views.put(kind, event["object"])
