"""The operator's watch-fed views: what a reconcile pass reads instead of the apiserver."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tratree_operator.types import LABEL_EXPERIMENT
from tratree_operator.views import TOMBSTONE_SECONDS, Views

KEY = ("lab", "exp")


def job(name: str, version: int, experiment: str = "exp", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "lab", "resourceVersion": str(version),
                         "labels": {LABEL_EXPERIMENT: experiment}}, "status": status}


def names(views: Views, kind: str = "jobs") -> dict[str, str]:
    return {j["metadata"]["name"]: j["metadata"]["resourceVersion"] for j in views.children(kind, KEY)}


def test_a_late_older_copy_never_replaces_a_newer_one_nor_revives_a_deleted_one():
    v = Views()
    v.put("jobs", job("a", 5, active=1))
    v.put("jobs", job("a", 3))  # a create's answer arriving after the watch's MODIFIED
    assert names(v) == {"a": "5"}
    v.remove("jobs", job("a", 7))
    v.put("jobs", job("a", 5))  # an old copy after the watch's DELETED
    assert names(v) == {}
    v.put("jobs", job("a", 9))  # made again under the same name: newer than its tombstone
    assert names(v) == {"a": "9"}
    v.put("jobs", {"metadata": {"name": "b", "namespace": "lab", "resourceVersion": "1"}})  # no experiment's
    assert names(v) == {"a": "9"}
    big = job("c", 10)
    big["metadata"]["managedFields"] = [{"manager": "kube-controller-manager", "fieldsV1": {"f:status": {}}}]
    v.put("jobs", big)
    v.listed("pods", KEY, [{**big, "kind": "Pod"}], "10")
    kept = [o for kind in ("jobs", "pods") for o in v.children(kind, KEY) if o["metadata"]["name"] == "c"]
    assert len(kept) == 2 and all("managedFields" not in o["metadata"] for o in kept)  # never read: not kept
    assert "managedFields" in big["metadata"]  # the caller's object is left as it was


def test_a_list_replaces_the_view_but_keeps_what_the_watch_brought_after_it():
    v = Views()
    v.put("jobs", job("old", 2))  # gone from the cluster, its DELETED lost: the list repairs it
    v.put("jobs", job("new", 12))  # created after the list was taken
    v.put("jobs", job("kept", 11))  # changed after the list was taken
    v.listed("jobs", KEY, [job("kept", 8), job("listed", 9)], "10")
    assert names(v) == {"new": "12", "kept": "11", "listed": "9"}


def test_an_experiment_is_listed_on_its_first_pass_and_then_every_period():
    now = [0.0]
    v = Views(clock=lambda: now[0])
    assert v.needs_listing(KEY, 600)
    v.listed("jobs", KEY, [], "1")
    v.listed("pods", KEY, [], "1")
    now[0] = 599
    assert not v.needs_listing(KEY, 600)
    now[0] = 600
    assert v.needs_listing(KEY, 600)
    v.forget(KEY)
    assert v.needs_listing(KEY, 600) and names(v) == {}


def test_a_watch_that_lists_anew_has_every_experiment_listed_again_once():
    """After 410 Gone kopf lists everything again (events of type None) and no DELETED comes for what went
    meanwhile: each experiment listed before that is listed again, once per listing however long it is."""
    now = [0.0]
    v = Views(clock=lambda: now[0])
    v.listed("pods", KEY, [], "1")
    now[0] = 100
    assert not v.needs_listing(KEY, 3600)
    v.watch_listed()  # the listing's first object
    assert v.needs_listing(KEY, 3600)
    now[0] = 101
    v.listed("pods", KEY, [], "2")
    now[0] = 103
    v.watch_listed()  # the same listing goes on
    assert not v.needs_listing(KEY, 3600)
    now[0] = 200
    v.watch_listed()  # another restart, later
    assert v.needs_listing(KEY, 3600)


def test_what_the_views_keep_of_a_pod_is_what_is_read():
    """A Pod's command, environment, mounts and volumes are never read: not kept (at 1,000 experiments
    they were most of the operator's memory); its requests, placement, labels, owners and status are."""
    pod = {"metadata": {"name": "p", "namespace": "lab", "resourceVersion": "3", "labels": {LABEL_EXPERIMENT: "exp"},
                        "ownerReferences": [{"uid": "j"}], "managedFields": [{"manager": "kubelet"}]},
           "spec": {"containers": [{"name": "stage", "command": ["tratree", "stage"], "env": [{"name": "A", "value": "1"}],
                                    "resources": {"requests": {"nvidia.com/gpu": "1"}}}],
                    "volumes": [{"name": "work", "emptyDir": {}}], "nodeName": "n1", "nodeSelector": {"gpu": "h200"},
                    "tolerations": [{"key": "gpu", "operator": "Exists"}]},
           "status": {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}]}}
    v = Views()
    v.put("pods", pod)
    (held,) = v.children("pods", KEY)
    assert held["spec"] == {"nodeName": "n1", "nodeSelector": {"gpu": "h200"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
                            "containers": [{"name": "stage", "resources": {"requests": {"nvidia.com/gpu": "1"}}}]}
    assert held["status"] == pod["status"] and "managedFields" not in held["metadata"]
    assert held["metadata"] == {k: v for k, v in pod["metadata"].items() if k != "managedFields"}


def test_tombstones_are_dropped_after_a_while():
    now = [0.0]
    v = Views(clock=lambda: now[0])
    v.remove("jobs", job("a", 5))
    now[0] = TOMBSTONE_SECONDS + 1
    v.remove("jobs", job("b", 6))  # pruning happens as others are buried
    v.put("jobs", job("a", 4))
    assert names(v) == {"a": "4"}


def test_a_tombstone_laid_again_lasts_from_its_latest_deletion():
    now = [0.0]
    v = Views(clock=lambda: now[0])
    v.remove("jobs", job("a", 5))
    v.remove("jobs", job("b", 5))
    now[0] = TOMBSTONE_SECONDS - 1
    v.remove("jobs", job("a", 7))
    now[0] = TOMBSTONE_SECONDS + 1
    v.remove("jobs", job("c", 5))  # b's tombstone has expired, a's (laid again) has not
    v.put("jobs", job("a", 6))
    v.put("jobs", job("b", 4))
    assert names(v) == {"b": "4"}


events = st.lists(st.tuples(st.sampled_from(["put", "remove"]), st.sampled_from("abc"), st.integers(1, 30)),
                  max_size=30)


@given(events)
def test_whatever_order_events_arrive_in_the_view_holds_each_objects_latest_word(seq):
    """The view ends as the newest event of each object says (kept at its version, or gone), whatever the
    order events and write answers arrive in."""
    v = Views()
    for op, name, version in seq:
        (v.put if op == "put" else v.remove)("jobs", job(name, version))
    latest: dict[str, tuple[int, int]] = {}  # name -> (version, 1 put / 0 remove); at a tie a removal wins
    for op, name, version in seq:
        mark = (version, 0 if op == "remove" else 1)
        if name not in latest or (version, -mark[1]) > (latest[name][0], -latest[name][1]):
            latest[name] = mark
    want = {n: str(ver) for n, (ver, put) in latest.items() if put}
    assert names(v) == want


def test_an_experiment_view_is_the_newest_copy_each_reader_gets_its_own_and_a_deletion_buries_it():
    def experiment(version: int, phase: str) -> dict[str, Any]:
        return {"metadata": {"name": "exp", "namespace": "lab", "resourceVersion": str(version),
                             "managedFields": [{"manager": "kubectl"}]},
                "spec": {"methods": ["sft-weak"]}, "status": {"phase": phase}}

    v = Views()
    assert v.experiment(KEY) is None and not v.holds_experiment(KEY)
    v.put("experiments", experiment(4, "Running"))
    v.put("experiments", experiment(3, "Pending"))  # a late older copy
    got = v.experiment(KEY)
    assert got["status"] == {"phase": "Running"} and "managedFields" not in got["metadata"]
    got["status"]["phase"] = "Changed by a reader"  # packed: a reader's edit is its own
    assert v.experiment(KEY)["status"] == {"phase": "Running"}
    v.remove("experiments", experiment(5, "Running"))
    v.put("experiments", experiment(4, "Running"))
    assert v.experiment(KEY) is None and not v.holds_experiment(KEY)
