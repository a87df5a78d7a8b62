"""Where the Kubernetes API is: the pod's service account in a cluster, else a kubeconfig
($KUBECONFIG or ~/.kube/config). Shared by the ledger mirror and the namespace pruner."""

from __future__ import annotations

import os

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config


class NoKubeConfig(Exception):
    """Not in a cluster and no usable kubeconfig."""


def kube_configuration() -> k8s_client.Configuration:
    cfg = k8s_client.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=cfg)
    except k8s_config.ConfigException as in_cluster:
        try:
            # $KUBECONFIG is read now (the library reads it once, at import time)
            k8s_config.load_kube_config(
                config_file=os.environ.get("KUBECONFIG") or None, client_configuration=cfg)
        except (k8s_config.ConfigException, OSError) as kubeconfig:
            raise NoKubeConfig(f"not in a cluster ({in_cluster}) and no usable kubeconfig "
                               f"({kubeconfig})") from kubeconfig
    return cfg
