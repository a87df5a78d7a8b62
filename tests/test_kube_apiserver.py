"""The test apiserver itself, through the unmodified kubernetes client."""

from __future__ import annotations

import base64
import json
import time

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.kube_apiserver import KubeApiServer

NS = "ns1"


@pytest.fixture
def kube():
    with KubeApiServer() as server:
        yield server


@pytest.fixture
def core(kube):
    api_client = kube.api_client()
    yield client.CoreV1Api(api_client)
    api_client.close()


def status_of(err: pytest.ExceptionInfo[ApiException]) -> dict:
    body = json.loads(err.value.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    return body


def test_server_owned_metadata_and_global_resource_version(kube, core):
    a = core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}, "data": {"k": "v"}})
    b = core.create_namespaced_config_map("ns2", {"metadata": {"name": "b"}})
    assert a.kind == "ConfigMap" and a.api_version == "v1"
    assert a.metadata.namespace == NS and a.metadata.uid and a.metadata.creation_timestamp
    assert int(b.metadata.resource_version) == int(a.metadata.resource_version) + 1
    # a no-op update keeps the resourceVersion (the apiserver skips the write)
    same = core.replace_namespaced_config_map(
        "a", NS, {"metadata": {"name": "a"}, "data": {"k": "v"}}
    )
    assert same.metadata.resource_version == a.metadata.resource_version
    # an update without resourceVersion is unconditional
    c = core.replace_namespaced_config_map("a", NS, {"metadata": {"name": "a"}, "data": {"k": "w"}})
    assert int(c.metadata.resource_version) > int(b.metadata.resource_version)
    assert c.metadata.creation_timestamp == a.metadata.creation_timestamp
    assert kube.writes == 4


def test_patches(core):
    core.create_namespaced_config_map(
        NS, {"metadata": {"name": "p", "labels": {"x": "1"}}, "data": {"a": "1", "b": "2"}}
    )
    got = core.patch_namespaced_config_map("p", NS, {"data": {"c": "3", "a": None}})
    assert got.data == {"b": "2", "c": "3"}
    got = core.patch_namespaced_config_map(
        "p",
        NS,
        {"metadata": {"labels": {"y": "2"}}, "data": {"b": None}},
        _content_type="application/merge-patch+json",
    )
    assert got.data == {"c": "3"} and got.metadata.labels == {"x": "1", "y": "2"}
    got = core.patch_namespaced_config_map(
        "p", NS, [{"op": "add", "path": "/data/d", "value": "4"}]
    )
    assert got.data == {"c": "3", "d": "4"}
    # a resourceVersion in the patch is a precondition
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_config_map(
            "p", NS, {"metadata": {"resourceVersion": "1"}, "data": {"e": "5"}}
        )
    assert err.value.status == 409 and status_of(err)["reason"] == "Conflict"


def test_validation(core):
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "Bad_Name"}})
    assert err.value.status == 422
    assert status_of(err)["details"]["causes"][0]["field"] == "metadata.name"
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "k"}, "data": {"a/b": "x"}})
    assert err.value.status == 422 and status_of(err)["reason"] == "Invalid"
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(
            NS, {"metadata": {"name": "k"}, "binaryData": {"b": "not base64!"}}
        )
    assert err.value.status == 400
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map(
            NS, {"metadata": {"name": "k"}, "data": {"a": "x"}, "binaryData": {"a": "eA=="}}
        )
    assert err.value.status == 422
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_config_map("other", NS, {"metadata": {"name": "k"}})
    assert err.value.status == 400


def test_binary_data_counts_decoded_bytes(core):
    # base64 text is 4/3 longer than the limit, the decoded bytes are not
    payload = base64.b64encode(b"\1" * 1_000_000).decode()
    assert len(payload) > 1_048_576
    core.create_namespaced_config_map(
        NS, {"metadata": {"name": "bin"}, "binaryData": {"b": payload}}
    )
    assert core.read_namespaced_config_map("bin", NS).binary_data["b"] == payload


def test_list_delete_and_preconditions(kube, core):
    for name, role in (("h", "head"), ("s1", "shard"), ("s2", "shard")):
        core.create_namespaced_config_map(
            NS, {"metadata": {"name": name, "labels": {"role": role}}}
        )
    items = core.list_namespaced_config_map(NS, label_selector="role=shard").items
    assert [i.metadata.name for i in items] == ["s1", "s2"]
    assert [i.metadata.name for i in core.list_namespaced_config_map(NS).items] == ["h", "s1", "s2"]
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_config_map(
            "s1", NS, body=client.V1DeleteOptions(preconditions={"resourceVersion": "999"})
        )
    assert err.value.status == 409
    status = core.delete_namespaced_config_map("s1", NS)
    assert status["status"] == "Success" and status["details"]["name"] == "s1"
    assert kube.names(NS) == ["h", "s2"]


def test_fault_injection(kube, core):
    core.create_namespaced_config_map(NS, {"metadata": {"name": "f"}})
    kube.inject_fault(500, count=2)
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            core.read_namespaced_config_map("f", NS)
        assert err.value.status == 500 and status_of(err)["reason"] == "InternalError"
    core.read_namespaced_config_map("f", NS)  # count exhausted

    kube.inject_fault(503, count=None, methods={"PUT"})
    for _ in range(3):
        with pytest.raises(ApiException) as err:
            core.replace_namespaced_config_map("f", NS, {"metadata": {"name": "f"}})
        assert err.value.status == 503 and status_of(err)["reason"] == "ServiceUnavailable"
    core.read_namespaced_config_map("f", NS)  # GETs are not affected
    kube.clear_faults()
    core.replace_namespaced_config_map("f", NS, {"metadata": {"name": "f"}, "data": {"a": "b"}})

    kube.inject_fault(hang=0.5, count=1)
    started = time.monotonic()
    core.read_namespaced_config_map("f", NS)  # slow but answered
    assert time.monotonic() - started >= 0.5
    writes = kube.writes
    assert writes == 2  # create + the one successful replace


def test_token_auth_and_kubeconfig(tmp_path):
    from kubernetes import config

    with KubeApiServer(token="t0k") as kube:
        path = kube.write_kubeconfig(tmp_path / "config", namespace=NS)
        api_client = config.new_client_from_config(config_file=str(path))
        client.CoreV1Api(api_client).create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
        with pytest.raises(ApiException) as err:
            client.CoreV1Api(
                client.ApiClient(client.Configuration(host=kube.url))
            ).read_namespaced_config_map("a", NS)
        assert err.value.status == 401
