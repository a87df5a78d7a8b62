"""A running placement worker re-reads its pools file when it changes on disk, however it is
changed: a new file renamed over it (`vcm pools`, the tests' replace_file), a write in place
(an editor, `cat >`), or the kubelet's swap of a ConfigMap volume's `..data` symlink. A request
sent once the change is on disk is decided on the new pools: also when the worker's
background thread is reading them at that moment, and however quickly changes of one size
follow each other (a freed inode number is given to the next new file at once).

The fleet is large (reading it takes a good part of a second), so that a request can arrive
while the background thread reads it; inotify tells the test when that thread has read the
file (it closes it, then parses it)."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from inotify_simple import INotify, flags

from tests.support.helpers import call, failure, replace_file
from tests.support.kube import KubeApiServer
from tests.support.kubelet import ConfigMapVolume
from tests.support.procs import Stack

FLEET = 500
NAMESPACE, CONFIGMAP = "vcm", "vcm-pools"


def pool(name: str, i: int) -> dict[str, Any]:
    return {"name": name, "vcenter": f"vc{i % 8}.example.com", "datacenter": "dc",
            "cluster": f"c{i}", "datastore": f"ds{i}", "vcpus": 16, "memory": 64,
            "storage": 100,
            "networks": [{"port-group": f"pg-{i}-{j}", "vlan": 2 * i + j} for j in range(2)]}


@functools.cache
def fleet_text() -> str:
    """The fleet's pools as the items of the file's `pools` list (dumped once: a dump of the
    whole fleet costs the test process a quarter of a second)."""
    return yaml.safe_dump([pool(f"p{i:03}", i) for i in range(FLEET)])


def pools_text(version: int) -> str:
    """The fleet and one pool named for `version` (0..99): every version is of one size.
    The text yaml.safe_dump gives for the whole file, its list's items put together."""
    return "pools:\n" + fleet_text() + yaml.safe_dump([pool(f"fresh-{version:02}", FLEET)])


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("reload"), pools_text(0), queries=False)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def cm_stack(tmp_path_factory) -> Iterator[tuple[Stack, ConfigMapVolume, KubeApiServer]]:
    """A worker whose pools file is a ConfigMap's key, projected the way the kubelet does."""
    tmp = tmp_path_factory.mktemp("reload-cm")
    kube = KubeApiServer(namespaces=[NAMESPACE])  # its object store only: no HTTP here
    kube.put({"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": CONFIGMAP, "namespace": NAMESPACE},
              "data": {"pools.yaml": pools_text(0)}})
    volume = ConfigMapVolume(kube, NAMESPACE, CONFIGMAP, tmp / "etc-vcm")
    volume.sync()
    s = Stack(tmp, pools_text(0), queries=False, VCM_POOLS_FILE=str(volume.dir / "pools.yaml"))
    yield s, volume, kube
    s.stop()


def change(how: str, path: Path, text: str) -> None:
    if how == "rename":
        replace_file(path, text)
    else:  # in place: the same inode truncated and written
        path.write_text(text)


def on(pool_name: str, owner: str) -> dict[str, Any]:
    """A small request for one pool (no network: the fresh pools of each version list the
    same port groups)."""
    return {"vcpus": 1, "memory": 1, "networks": 0, "owner": owner, "required-pool": pool_name}


def acquire_on(app, pool_name: str, owner: str) -> dict[str, Any]:
    (lease,) = call(app, "vcm.acquire", request=on(pool_name, owner))
    return lease


def wait_for_read(ino: INotify, marker: int, timeout: float = 60) -> None:
    """Until the worker has read the pools file after our change: the first close of
    pools.yaml opened for reading that follows the `marker` event on it (the one our change
    ended with: an earlier read may have caught the file half written in place). Nothing
    else here opens the file, and the worker reads it only when it changed."""
    seen_change = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in ino.read(timeout=500):
            if event.name != "pools.yaml":
                continue
            if event.mask & marker:
                seen_change = True
            elif seen_change and event.mask & flags.CLOSE_NOWRITE:
                return
    raise TimeoutError("the placement worker never read the changed pools file")


@pytest.mark.parametrize("how", ["rename", "in-place"])
def test_a_request_sent_while_the_worker_reads_the_changed_file_gets_the_new_pools(stack, how):
    """The worker's background thread (the publisher, once a second) notices the change and
    reads the file; a request arrives while it parses what it read. That request waits for
    the new pools: it was refused `unknown pool` before, decided on the pools of before
    although the worker had seen the change (the file's stamp was taken as read before the
    new pools were in place)."""
    owner = f"reload-{uuid.uuid4().hex[:8]}"
    marker = flags.MOVED_TO if how == "rename" else flags.CLOSE_WRITE
    try:
        with INotify() as ino:
            ino.add_watch(stack.pools.parent,
                          flags.CLOSE_NOWRITE | flags.CLOSE_WRITE | flags.MOVED_TO)
            for version in (11, 12, 13):
                change(how, stack.pools, pools_text(version))
                wait_for_read(ino, marker)
                lease = acquire_on(stack.app, f"fresh-{version:02}", owner)
                assert lease["status"]["pool"] == f"fresh-{version:02}"
    finally:
        call(stack.app, "vcm.release", owner=owner)


def check_changes(app, apply, owner: str) -> None:
    """Versions of one size, each applied and at once asked for (A, B, A, C, A: the file of
    the first A's inode number may come back with the second A); the pool of a version gone is
    refused, naming it."""
    for version in (21, 22, 21, 23, 21):
        apply(pools_text(version))
        assert acquire_on(app, f"fresh-{version:02}", owner)["status"]["pool"] == \
            f"fresh-{version:02}"
    exc = failure(app, "vcm.acquire", request=on("fresh-23", owner))
    assert type(exc).__name__ == "InvalidRequest", exc
    assert "unknown pool 'fresh-23'" in str(exc)


@pytest.mark.parametrize("how", ["rename", "in-place"])
def test_each_change_of_the_file_is_seen_at_once(stack, how):
    owner = f"seq-{uuid.uuid4().hex[:8]}"
    try:
        check_changes(stack.app, lambda text: change(how, stack.pools, text), owner)
    finally:
        call(stack.app, "vcm.release", owner=owner)


def test_each_swap_of_a_configmap_volume_is_seen_at_once(cm_stack):
    s, volume, kube = cm_stack
    owner = f"cm-{uuid.uuid4().hex[:8]}"

    def apply(text: str) -> None:
        cm = kube.get(NAMESPACE, CONFIGMAP)
        kube.put({**cm, "data": {"pools.yaml": text}})
        assert volume.sync()  # the kubelet's next sync: `..data` swapped to the new files

    try:
        check_changes(s.app, apply, owner)
    finally:
        call(s.app, "vcm.release", owner=owner)
