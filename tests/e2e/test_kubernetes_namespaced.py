"""The chart's namespaced mode on the real control plane: the operator serves its namespaces under
a Role in each (plus kopf's cluster-scoped reads) through a run, an edit, a failure and a delete,
with no 403, and uses exactly those rules."""

from __future__ import annotations

import re
import time

import helm_python as helm
import pytest
import yaml

from tests.e2e.test_kubernetes import FAST, Operator, diagnose, experiment, namespace, s3_secret, wait_phase
from tests.e2e.test_kubernetes import status as status_of
from tests.unit.test_chart import CHART, rule_set

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RELEASE, RELEASE_NS, TEAM = "teams", "teams-system", "team-a"


def test_namespaced_mode_runs_under_its_roles(kube, tmp_path, s3_env):
    kube.kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    for ns in (RELEASE_NS, TEAM):
        namespace(kube, ns)
    rendered = helm.Chart.load(CHART).render({"watchNamespaces": [TEAM]}, name=RELEASE, namespace=RELEASE_NS,
                                             is_install=True)
    docs = [d for path, text in rendered.items() if not path.endswith(".txt") for d in yaml.safe_load_all(text) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    kube.apply([d for d in docs if d["kind"] not in ("Deployment", "Service", "ServiceMonitor")])
    config = yaml.safe_load(next(iter(next(d for d in docs if d["kind"] == "ConfigMap")["data"].values())))
    account = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    args = [a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            if a.startswith(("--peering", "--namespace"))]
    operator = Operator(kube, tmp_path, kube.service_account_kubeconfig(RELEASE_NS, account), {**config, **FAST},
                        tuple(args))
    try:
        s3_secret(kube, TEAM)
        good, bad = experiment("team-run", s3_env), experiment("team-fail", s3_env)
        bad["spec"]["environment"]["gameParams"] = "numLocations=banana"
        bad["spec"]["kubernetes"]["stages"] = {"expert": {"retries": 0}}
        kube.apply([good, bad], "-n", TEAM)
        deadline = time.monotonic() + 300
        while status_of(kube, "team-run", TEAM).get("stages", {}).get("eval-sft-weak-s0", {}).get("state") != "Running":
            assert time.monotonic() < deadline, diagnose(kube, TEAM, operator)
            time.sleep(0.3)
        kube.kubectl("-n", TEAM, "patch", "w2sg", "team-run", "--type=merge", "-p",
                     '{"spec": {"evaluation": {"temperature": 0.5}}}')
        wait_phase(kube, "team-run", TEAM, "Succeeded", operator, 300)
        wait_phase(kube, "team-fail", TEAM, "Failed", operator, 120)
        kube.kubectl("-n", TEAM, "delete", "w2sg", "--all", "--wait=true")
        kube.wait_for(lambda: not kube.list("jobs", TEAM), 90, "garbage collection")
        assert not re.search(r"\(403\)|[Ff]orbidden", operator.log()), operator.log()[-3000:]
        rules = set()
        for d in docs:
            if d["kind"] in ("Role", "ClusterRole"):
                rules |= rule_set(d["rules"])
        calls = kube.calls_by(f"system:serviceaccount:{RELEASE_NS}:{account}")
        assert calls <= rules, f"called but not allowed: {calls - rules}"
        # unused here: the finalizers rule (admission checks it) and listing Events, which the operator does
        # only for a Job whose Pods cannot be created (test_kubernetes' Pod Security test uses it)
        assert rules - calls == {("tratree.io", "w2sgexperiments/finalizers", "update"), ("", "events", "list")}, \
            rules - calls
    finally:
        operator.stop()
