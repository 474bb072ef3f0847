"""``python -m tratree_operator``: the operator with production settings.

Several replicas may run: with peering on (the default), each takes a random priority and only
the highest is active; the others take over when its peering record expires.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import socket
import sys
import uuid

import kopf

import tratree_operator.handlers  # noqa: F401 - importing registers the kopf handlers
from tratree_operator import metrics
from tratree_operator.config import ConfigError, load_config
from tratree_operator.controller import Controller
from tratree_operator.kube import Kube, login
from tratree_operator.peering import Peering


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m tratree_operator", description=__doc__)
    p.add_argument("-n", "--namespace", action="append", default=[],
                   help="serve this namespace (repeatable; globs allowed); all namespaces when none is given")
    p.add_argument("--config", default=env("TRATREE_OPERATOR_CONFIG"), help="operator settings (YAML)")
    p.add_argument("--peering", default=env("TRATREE_PEERING", "tratree"), help="kopf peering object name")
    p.add_argument("--standalone", action="store_true", default=env("TRATREE_STANDALONE") == "1",
                   help="no peering: the only replica")
    p.add_argument("--priority", type=int, default=None, help="peering priority (default: random)")
    p.add_argument("--peering-lifetime", type=int, default=int(env("TRATREE_PEERING_LIFETIME", "60")),
                   help="seconds a silent peer counts as alive: how soon a standby takes over from a dead replica")
    p.add_argument("--liveness", default=env("TRATREE_LIVENESS", "http://0.0.0.0:8080/healthz"),
                   help="health endpoint URL ('' to disable)")
    # no environment default: a Service named like the release's metrics Service makes the kubelet inject
    # TRATREE_METRICS_PORT=tcp://IP:PORT into the Pod, which is no port number
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0 to disable)")
    p.add_argument("--concurrency", type=int, default=8, help="experiments reconciled at once")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # --verbose is about the operator and kopf; the S3 client's wire-level debugging is not
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.INFO)
    try:
        info = login()
    except kopf.LoginError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    metrics.serve(args.metrics_port)

    async def run() -> None:
        kube = Kube(info)
        if not args.standalone:
            missing = await kube.missing_peering(args.peering, args.namespace)
            if missing:
                # kopf would wait for it silently (a DEBUG line) and handle nothing
                logging.getLogger("tratree_operator").warning(
                    "peering object %r not found (%s): the operator waits for it and handles nothing until it "
                    "exists; install the chart's peering objects (peering.enabled) or run with --standalone",
                    args.peering, ", ".join(missing))
        priority = args.priority if args.priority is not None else random.randint(1, 1_000_000)
        identity = f"{socket.gethostname()}@{os.getpid()}-{uuid.uuid4().hex[:8]}"
        peering = None if args.standalone else Peering(kube, args.peering, identity, priority, not args.namespace)
        memo = kopf.Memo(controller=Controller(kube, config, concurrency=args.concurrency, peering=peering),
                         peering_lifetime=args.peering_lifetime)
        await kopf.operator(
            memo=memo,
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering,
            identity=identity,
            priority=priority,
            liveness_endpoint=args.liveness or None,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
        )

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
