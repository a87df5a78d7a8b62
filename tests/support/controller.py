"""The Lease controller under test, with everything it talks to real: the test apiserver with
the CRDs of deploy/crds/ (tests/support/kube_apiserver.py), a Stack (a private redis-server, a
placement worker and a queries worker, started as documented), and `vcm controller` as a
process. The apiserver serves HTTPS and authorizes by RBAC, as a cluster does: the controller
with its ServiceAccount's token and deploy/controller.yaml's Role (so that Role is exactly
enough), in the namespace that manifest gives it; a CI job (`ci_kubeconfig`) with ClusterRole
vcm-lease-client (deploy/lease-client-clusterrole.yaml) bound there, as a site binds it; the
test's own reads and `kubectl()` as an administrator.

Shared by tests/outside/test_controller.py and bench/bench_controller.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import yaml
from kubernetes import client as k8s

from tests.support.kube_apiserver import KubeApiServer
from tests.support.procs import ROOT, START_TIMEOUT, LoggedProcess, Stack, free_port, wait_for
from tests.support.rbac import RbacPolicy

GROUP, VERSION = "vspherecapacitymanager.splat.io", "v1"
NAMESPACE = "vsphere-capacity-manager"  # deploy/controller.yaml's: its Role is there
MANIFESTS = [ROOT / "deploy" / "controller.yaml",
             ROOT / "deploy" / "lease-client-clusterrole.yaml"]
CI_JOB = ("ci", "ci-job")  # the CI job's ServiceAccount: its namespace, its name
# what a site adds: the CI job's ServiceAccount, and ClusterRole vcm-lease-client bound to it
# in the namespace where the Leases are made
CI_BINDING = [
    {"apiVersion": "v1", "kind": "ServiceAccount",
     "metadata": {"name": CI_JOB[1], "namespace": CI_JOB[0]}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
     "metadata": {"name": "vcm-lease-client", "namespace": NAMESPACE},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                 "name": "vcm-lease-client"},
     "subjects": [{"kind": "ServiceAccount", "name": CI_JOB[1], "namespace": CI_JOB[0]}]}]
# fast loops for tests: the ledger is compared and the Pools refreshed twice a second; while
# the query workers are stopped, the start and a grant wait 3 s for the first publishing of
# the Pools and Networks, an adopt 2 s for the first read of the ledger (not 30 s and 10 s);
# a call that failed is tried again after a tenth of the deployed pauses
TEST_CONTROLLER_ENV = {"VCM_CONTROLLER_SYNC_INTERVAL": "0.5", "VCM_RESEND_AFTER": "2",
                       "VCM_CONTROLLER_PUBLISH_WAIT": "3", "VCM_CONTROLLER_LEDGER_WAIT": "2",
                       "VCM_CONTROLLER_RETRY_PAUSES": "0.1,0.2,0.5,1,3"}


class ControllerExited(RuntimeError):
    pass


class CrdStack:
    def __init__(self, tmp: Path, pools_yaml: str, namespace: str = NAMESPACE,
                 worker_env: dict[str, str] | None = None, **controller_env: str) -> None:
        self.tmp = Path(tmp)
        self.namespace = namespace
        manifests = [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]
        self.kube = KubeApiServer(rbac=RbacPolicy([*manifests, *CI_BINDING]), tls=True).start()
        try:
            self.kube.create_namespace(namespace)
            self.kubeconfig = self.kube.write_kubeconfig(self.tmp / "kubeconfig",
                                                         namespace=namespace)
            self.controller_kubeconfig = self.kube.write_kubeconfig(
                self.tmp / "controller.kubeconfig", namespace=namespace,
                token=self.kube.token_for(NAMESPACE, "vcm-controller"))
            self.ci_kubeconfig = self.kube.write_kubeconfig(
                self.tmp / "ci.kubeconfig", namespace=namespace,
                token=self.kube.token_for(*CI_JOB))
            self.stack = Stack(self.tmp, pools_yaml, **(worker_env or {}))
        except BaseException:
            self.kube.stop()
            raise
        self.env = {**self.stack.env, "KUBECONFIG": str(self.controller_kubeconfig),
                    "VCM_CONTROLLER_NAMESPACES": namespace, **TEST_CONTROLLER_ENV,
                    **controller_env}
        self.api = k8s.CustomObjectsApi(self.kube.api_client())
        self.controller = LoggedProcess()
        self.controller.log = str(self.tmp / "controller.log")
        self.health = ""
        try:
            self.start_controller()
        except BaseException:
            self.stop()
            raise

    # -- the controller process ------------------------------------------------------------
    def start_controller(self) -> None:
        port = free_port()
        self.health = f"http://127.0.0.1:{port}/healthz"
        self.controller.spawn([sys.executable, "-m", "workers.cli", "controller",
                               "--liveness", self.health], self.env)

        def up() -> bool:
            if self.controller.proc.poll() is not None:
                raise ControllerExited(self.controller.output_of_this_run()[-3000:])
            try:
                return httpx.get(self.health, timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=START_TIMEOUT, what="the controller's liveness endpoint")
        wait_for(lambda: self.objects("pools"), timeout=START_TIMEOUT,
                 what="the Pools to be published")

    def kill_controller(self) -> None:
        """SIGKILL: no cleanup, no goodbye (a node lost, an OOM kill)."""
        proc = self.controller.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(15)
        if self.controller.out is not None:
            self.controller.out.close()

    def alive(self) -> bool:
        return self.controller.proc is not None and self.controller.proc.poll() is None

    def stop(self) -> None:
        self.kill_controller()
        self.stack.stop()
        self.kube.stop()

    # -- the API, as clients see it --------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
        exe = shutil.which("kubectl")
        assert exe, "kubectl is not installed"
        p = subprocess.run([exe, "--kubeconfig", str(self.kubeconfig), "-n", self.namespace,
                            *args], input=input, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        if check:
            assert p.returncode == 0, f"kubectl {' '.join(args)}: {p.stderr}"
        return p

    def create_lease(self, spec: dict[str, Any], labels: dict[str, str] | None = None,
                     annotations: dict[str, str] | None = None,
                     prefix: str = "lease-") -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Lease",
                "metadata": {"generateName": prefix, "labels": labels or {},
                             "annotations": annotations or {}},
                "spec": spec}
        return self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                        "leases", body)

    def lease(self, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                         "leases", name)
        except k8s.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def objects(self, plural: str, selector: str | None = None) -> list[dict[str, Any]]:
        kwargs = {"label_selector": selector} if selector else {}
        return self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, plural,
                                                      **kwargs)["items"]

    def delete_lease(self, name: str, missing_ok: bool = False) -> None:
        """`missing_ok`: a Lease gone already (one being deleted ends once its finalizer is
        removed, between a list and this delete) is no error."""
        try:
            self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, "leases",
                                                     name)
        except k8s.ApiException as exc:
            if not (missing_ok and exc.status == 404):
                raise

    def wait_phase(self, name: str, *phases: str, timeout: float = 30.0) -> dict[str, Any]:
        """The Lease once its phase is one of `phases` (fails naming the phase it had)."""
        seen: dict[str, Any] = {}

        def there() -> dict[str, Any] | None:
            if not self.alive():
                raise ControllerExited(self.controller.output_of_this_run()[-3000:])
            seen["lease"] = self.lease(name)
            got = seen["lease"] and (seen["lease"].get("status") or {}).get("phase")
            return seen["lease"] if got in phases else None

        try:
            return wait_for(there, timeout=timeout, what=f"Lease {name} to be {phases}")
        except (AssertionError, TimeoutError):
            raise AssertionError(f"Lease {name}: {json.dumps(seen.get('lease'))[:3000]}\n"
                                 f"{self.controller.output()[-6000:]}") from None

    def wait_gone(self, name: str, timeout: float = 30.0) -> None:
        wait_for(lambda: self.lease(name) is None, timeout=timeout,
                 what=f"Lease {name} to be gone")

    def ledger_leases(self, selector: str | None = None) -> list[dict[str, Any]]:
        """The active ledger leases (vcm.list_leases), as any client reads them."""
        kwargs = {"selector": selector} if selector else {}
        return self.stack.app.send_task("vcm.list_leases", kwargs=kwargs,
                                        queue="queries").get(timeout=30)

    def release(self, **kwargs: Any) -> list[str]:
        """vcm.release, sent as `vcm release` sends it."""
        return self.stack.app.send_task("vcm.release", kwargs=kwargs,
                                        queue="placement").get(timeout=30)


def unique(prefix: str = "b") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def condition(lease: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in (lease.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c
    return {}


def age(started: float) -> float:
    return time.monotonic() - started
