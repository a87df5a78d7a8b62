"""A pool's annotations (and the other pool fields published as Kubernetes object fields:
labels, network types, short-name) in the pools file: what Kubernetes takes is accepted and
passed through to leases untouched; anything else is refused naming the file, the pool and
the field, from plain data and from a YAML file on disk. Labels are the exception: any text is
a pool label (pool-selector matches it), and one Kubernetes does not take is left off the
Pool object and named in a warning."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.adapters.pools_file import load_pools
from workers.core.errors import ConfigError
from workers.core.grants import make_lease
from workers.core.models import Request
from workers.core.pools import label_warnings, parse_pools
from workers.core.reasons import eligibility
from workers.core.upstream import pool_object

FILE = "/etc/vcm/pools.yaml"


def pool(**kw) -> dict:
    return {"name": "pool1", "vcenter": "vc1", "datacenter": "dc1", "cluster": "c1",
            "datastore": "ds1", "vcpus": 8, "memory": 8, "storage": 8,
            "networks": [{"port-group": "pg1", "vlan": 1}], **kw}


def refused(raw_pool: dict, field: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_pools({"pools": [raw_pool]}, FILE)
    err = info.value
    assert err.details == {"file": FILE, "pool": "pool1", "field": field}, err.details
    assert str(err).startswith(f"{FILE}: pool 'pool1': field {field!r}: "), str(err)
    return err


def test_annotations_pass_through_to_the_lease_and_the_pool_object():
    value = "/var/run/vault/vsphere-ibmcloud-ci/secrets.sh"
    annotations = {"ci-auth-path": value, "example.com/owner": "team a (see #42): 'x' \"y\""}
    (p,) = parse_pools({"pools": [pool(annotations=annotations)]}, FILE)
    assert dict(p.annotations) == annotations
    assert p.spec()["annotations"] == annotations
    lease = make_lease("l", Request(vcpus=1, memory=1), p, [p.networks[0]], 0)
    assert lease["status"]["pool-annotations"] == annotations
    assert pool_object(p)["metadata"]["annotations"] == annotations


def test_a_pool_without_annotations_adds_nothing():
    (p,) = parse_pools({"pools": [pool()]}, FILE)
    lease = make_lease("l", Request(vcpus=1, memory=1), p, [], 0)
    assert "pool-annotations" not in lease["status"] and "annotations" not in p.spec()
    assert "annotations" not in pool_object(p)["metadata"]


@pytest.mark.parametrize(("value", "problem"), [
    ("a\x00b", "control characters"), ("/path\n/evil", "control characters"),
    ("\x1b[31mred", "control characters"), ("a\rb", "control characters"),
    ("x\ud800", "lone surrogate"), ("owner\u202eecila", "bidirectional"),
    ("x" * 4097, "longer than 4096"),
])
def test_a_hostile_annotation_value_is_refused_naming_it(value, problem):
    err = refused(pool(annotations={"ci-auth-path": value}), "annotations.ci-auth-path")
    assert problem in str(err)
    assert value not in str(err) or len(value) < 20  # never echoed raw and whole


@pytest.mark.parametrize("value", [7, 1.5, True, None, ["a"], {"a": "b"}])
def test_an_annotation_value_that_is_not_a_string_is_refused(value):
    err = refused(pool(annotations={"ci-auth-path": value}), "annotations.ci-auth-path")
    assert "must be a string" in str(err)


@pytest.mark.parametrize("key", [
    "", "-x", "x-", "a/b/c", "Example.com/x", "exa_mple.com/x", "x" * 64, "/x", "x/",
    "a b", "k\x00", "k\ud800", "k\u202e", 7, None, ("a",),
])
def test_an_annotation_key_kubernetes_refuses_is_refused(key):
    err = refused(pool(annotations={key: "v"}), "annotations")
    assert "key" in str(err)


@pytest.mark.parametrize("raw", [["ci-auth-path"], "ci-auth-path", 7, True])
def test_annotations_that_are_not_a_map_are_refused(raw):
    refused(pool(annotations=raw), "annotations")


def test_too_many_or_too_large_annotations_are_refused():
    refused(pool(annotations={f"k{i}": "v" for i in range(65)}), "annotations")
    big = {f"k{i}": "x" * 4000 for i in range(5)}  # each fine, 20 KB in all
    err = refused(pool(annotations=big), "annotations.k4")
    assert "16384 bytes" in str(err)
    (p,) = parse_pools({"pools": [pool(annotations={f"k{i}": "x" * 4000
                                                    for i in range(4)})]}, FILE)
    assert len(p.annotations) == 4


key_names = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,20}[A-Za-z0-9])?", fullmatch=True)
prefixes = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,5}){0,2}",
                         fullmatch=True)
values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")).filter(
    lambda c: c not in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"), max_size=60)


@given(st.dictionaries(st.one_of(key_names, st.builds(lambda p, n: f"{p}/{n}", prefixes,
                                                      key_names)),
                       values, max_size=6))
def test_any_kubernetes_annotations_of_valid_text_are_kept_exactly(annotations):
    (p,) = parse_pools({"pools": [pool(annotations=annotations)]}, FILE)
    assert dict(p.annotations) == annotations


def test_a_hostile_annotation_in_a_yaml_file_is_refused_naming_it(tmp_path: Path):
    """The pools file as written by people: YAML's escapes put a control character into a
    value, a long value is folded over lines."""
    path = tmp_path / "pools.yaml"
    head = ("pools:\n  - {name: pool1, vcenter: vc1, datacenter: dc1, cluster: c1,\n"
            "     datastore: ds1, vcpus: 8, memory: 8, storage: 8,\n")
    path.write_text(head + '     annotations: {ci-auth-path: "/auth\\x1b[2J.sh"}}\n')
    with pytest.raises(ConfigError) as info:
        load_pools(str(path))
    assert info.value.details == {"file": str(path), "pool": "pool1",
                                  "field": "annotations.ci-auth-path"}
    path.write_text(head + f"     annotations: {{ci-auth-path: {'y' * 100_000}}}}}\n")
    with pytest.raises(ConfigError) as info:
        load_pools(str(path))
    assert info.value.details["field"] == "annotations.ci-auth-path"
    assert len(str(info.value)) < 500  # the message names it, it does not repeat it


# the other fields a Pool or Network object carries --------------------------------------------
ODD_LABELS = {"a/b/c": "x", "-region": "x", "zone": "us east", "region": "-east",
              "Example.com/x": "y", "rack": 7, "gpu": "true", "example.com/tier": "gold"}


def test_pool_labels_kubernetes_does_not_take_are_kept_for_selectors_not_published():
    """A pools file written before labels were published on Pool objects keeps working: such
    a label is selectable as ever, left off the Pool object, and named in a warning."""
    (p,) = parse_pools({"pools": [pool(labels=ODD_LABELS)]}, FILE)
    assert p.label_map() == {k: str(v) for k, v in ODD_LABELS.items()}
    assert p.spec()["labels"] == p.label_map()  # vcm.show_pools shows them all
    assert pool_object(p)["metadata"]["labels"] == {
        "rack": "7", "gpu": "true", "example.com/tier": "gold"}
    warnings = label_warnings([p], FILE)
    assert len(warnings) == 5
    for key in ("a/b/c", "-region", "zone", "region", "Example.com/x"):
        (line,) = [w for w in warnings if f"field 'labels.{key}'" in w]
        assert line.startswith(f"{FILE}: pool 'pool1': field 'labels.{key}': ")
        assert "left off the Pool object" in line
    for selector in ({"zone": "us east"}, {"Example.com/x": "y", "region": "-east"}):
        assert eligibility(Request(vcpus=1, memory=1,
                                   pool_selector=tuple(selector.items())), p) is None
    assert eligibility(Request(vcpus=1, memory=1, pool_selector=(("zone", "us-east"),)), p)


def test_a_pool_of_kubernetes_labels_only_warns_of_nothing():
    (p,) = parse_pools({"pools": [pool(labels={"region": "east", "zone": "us-east-1a"})]},
                       FILE)
    assert label_warnings([p], FILE) == []
    assert pool_object(p)["metadata"]["labels"] == {"region": "east", "zone": "us-east-1a"}
    (bare,) = parse_pools({"pools": [pool(labels={"zone": "us east"})]}, FILE)
    assert "labels" not in pool_object(bare)["metadata"]


@pytest.mark.parametrize(("labels", "field"), [
    ({"zone": "us\x00east"}, "labels.zone"), ({"zone": "a\nb"}, "labels.zone"),
    ({"zone": "x\ud800"}, "labels.zone"), ({"zone": "x" * 64}, "labels.zone"),
    ({"zone": None}, "labels"), ({"zone": True}, "labels"), ({"zone": ["a"]}, "labels"),
    ({"k\x1b": "v"}, "labels"), ({"k" * 318: "v"}, "labels"), ({1: "v"}, "labels"),
    ({"zone": "alice\u202e"}, "labels.zone"),
])
def test_pool_labels_that_are_not_text_are_still_refused(labels, field):
    refused(pool(labels=labels), field)


@pytest.mark.parametrize("net_type", ["multi tenant", "-x", "a/b", "x" * 63 + "y"])
def test_a_network_type_must_be_a_label_value(net_type):
    refused(pool(networks=[{"port-group": "pg1", "type": net_type}]), "networks[0].type")


@pytest.mark.parametrize("short", ["-a", "a-", "a b", "a.b", "x" * 31, "é"])
def test_a_short_name_must_be_upstreams_short_name(short):
    refused(pool(**{"short-name": short}), "short-name")


def test_a_template_and_a_short_name_reach_the_failure_domain():
    (p,) = parse_pools({"pools": [pool(**{"short-name": "use_1-a", "template": "rhcos-4.18",
                                          "folder": "/dc1/vm/ci"})]}, FILE)
    fd = make_lease("l", Request(vcpus=1, memory=1), p, [p.networks[0]], 0)[
        "status"]["failure-domain"]
    assert fd["name"] == "use_1-a"
    assert fd["topology"]["template"] == "/dc1/vm/rhcos-4.18"
    assert fd["topology"]["folder"] == "/dc1/vm/ci"
    assert fd["topology"]["networks"] == ["/dc1/network/pg1"]
