"""The emulated apiserver behaves as the operator's integration tests assume a real one does."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.e2e.cluster.apiserver import ApiServer, label_match, serve

pytestmark = pytest.mark.integration
JOBS = "/apis/batch/v1/namespaces/ns/jobs"
CRS = "/apis/tratree.io/v1alpha1/namespaces/ns/w2sgexperiments"
MERGE = {"Content-Type": "application/merge-patch+json"}


def job(name: str, **labels: str) -> dict:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
            "spec": {"template": {}}, "status": {"active": 5}}


async def call(api: ApiServer, method: str, url: str, body=None, headers=None) -> tuple[int, dict]:
    async with api.request(method, url, json=body, headers=headers) as r:
        return r.status, await r.json()


@pytest.fixture
async def api(tmp_path):
    async with serve(tmp_path / "kubeconfig") as server:
        yield server


async def test_create_sets_server_fields_answers_201_and_409_for_a_taken_name(api):
    status, obj = await call(api, "POST", JOBS, job("a"))
    assert status == 201
    meta = obj["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["generation"] == 1 and meta["creationTimestamp"]
    assert meta["namespace"] == "ns" and "status" not in obj  # status only through /status
    status, err = await call(api, "POST", JOBS, job("a"))
    assert status == 409 and err["reason"] == "AlreadyExists"


async def test_stale_resource_version_is_409_and_failed_json_patch_test_is_422(api):
    _, obj = await call(api, "POST", CRS, {"metadata": {"name": "x"}, "spec": {"a": 1}})
    rv = obj["metadata"]["resourceVersion"]
    status, _ = await call(api, "PATCH", f"{CRS}/x", {"spec": {"a": 2}}, MERGE)
    assert status == 200
    status, err = await call(api, "PATCH", f"{CRS}/x/status", {"metadata": {"resourceVersion": rv}, "status": {}}, MERGE)
    assert status == 409 and err["reason"] == "Conflict"
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, {"op": "add", "path": "/spec/b", "value": 1}]
    status, _ = await call(api, "PATCH", f"{CRS}/x", ops, {"Content-Type": "application/json-patch+json"})
    assert status == 422


async def test_status_writes_are_isolated_from_the_rest_and_generation_follows_spec(api):
    await call(api, "POST", CRS, {"metadata": {"name": "x"}, "spec": {"a": 1}})
    _, obj = await call(api, "PATCH", f"{CRS}/x/status", {"spec": {"a": 9}, "status": {"phase": "Running"}}, MERGE)
    assert obj["spec"] == {"a": 1} and obj["status"] == {"phase": "Running"} and obj["metadata"]["generation"] == 1
    _, obj = await call(api, "PATCH", f"{CRS}/x", {"spec": {"a": 2}, "status": {"phase": "Failed"}}, MERGE)
    assert obj["spec"] == {"a": 2} and obj["status"] == {"phase": "Running"} and obj["metadata"]["generation"] == 2
    _, obj = await call(api, "PATCH", f"{CRS}/x", {"metadata": {"annotations": {"k": "v"}}}, MERGE)
    assert obj["metadata"]["generation"] == 2


async def test_label_selectors_filter_lists():
    labels = {"app": "t", "tier": "gpu"}
    assert label_match(labels, "app=t,tier in (gpu, cpu)")
    assert label_match(labels, "app,!missing,tier!=cpu")
    assert not label_match(labels, "app=other")
    assert not label_match(labels, "tier notin (gpu)")


async def test_list_with_a_selector(api):
    await call(api, "POST", JOBS, job("a", exp="one"))
    await call(api, "POST", JOBS, job("b", exp="two"))
    _, listing = await call(api, "GET", f"{JOBS}?labelSelector=exp%3Done")
    assert [o["metadata"]["name"] for o in listing["items"]] == ["a"]


async def test_deleting_an_owner_collects_its_dependents_and_finalizers_hold_deletion(api):
    _, owner = await call(api, "POST", CRS, {"metadata": {"name": "x", "finalizers": ["f"]}, "spec": {}})
    ref = {"apiVersion": "tratree.io/v1alpha1", "kind": "W2SGExperiment", "name": "x", "uid": owner["metadata"]["uid"]}
    dep = job("a")
    dep["metadata"]["ownerReferences"] = [ref]
    await call(api, "POST", JOBS, dep)
    await call(api, "DELETE", f"{CRS}/x")
    assert api.get("w2sgexperiments", "ns", "x")["metadata"]["deletionTimestamp"]
    # the finalizer holds the owner, and with it its dependents: the Job is neither gone nor being deleted
    assert api.get("jobs", "ns", "a")["metadata"].get("deletionTimestamp") is None
    await call(api, "PATCH", f"{CRS}/x", {"metadata": {"finalizers": None}}, MERGE)
    assert api.get("w2sgexperiments", "ns", "x") is None and api.get("jobs", "ns", "a") is None


async def test_a_watch_resumes_from_a_resource_version_without_losing_events(api):
    _, listing = await call(api, "GET", JOBS)
    since = listing["metadata"]["resourceVersion"]
    await call(api, "POST", JOBS, job("before-watch"))  # happens between the list and the watch
    seen = []
    async with api.request("GET", f"{JOBS}?watch=true&resourceVersion={since}&timeoutSeconds=2") as r:
        await call(api, "POST", JOBS, job("during-watch"))
        async for line in r.content:
            if line.strip():
                seen.append(json.loads(line))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in seen] == [
        ("ADDED", "before-watch"), ("ADDED", "during-watch")]


async def test_injected_faults_are_answered_once(api):
    api.faults.append(("create", "jobs", None, 503))
    status, _ = await call(api, "POST", JOBS, job("a"))
    assert status == 503
    status, _ = await call(api, "POST", JOBS, job("a"))
    assert status == 201
    await asyncio.sleep(0)
