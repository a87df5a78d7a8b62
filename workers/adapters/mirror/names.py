"""What a ConfigMap mirror may be called: a namespace and a ConfigMap name as Kubernetes takes
them. Kept apart from the Kubernetes client, which a process with the file mirror never loads."""

from __future__ import annotations

import re

_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 253 - 4  # room for "-NNN"


def valid_namespace(namespace: str) -> bool:
    return bool(_DNS1123_LABEL.match(namespace or "")) and len(namespace) <= 63


def valid_name(name: str) -> bool:
    """A ConfigMap name (DNS-1123 subdomain) that leaves room for the slots' suffix."""
    return bool(_DNS1123_SUBDOMAIN.match(name or "")) and len(name) <= MAX_NAME
