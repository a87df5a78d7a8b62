"""vCenter sessions kept for the life of the worker process (`SESSIONS`), one per vCenter.

A `Session` is logged in on first use and checked before each use with
`SessionManager.currentSession` (one round trip): when the vCenter has dropped it (restart, idle
timeout, an administrator terminated it), it logs in again. Every call has a timeout (the socket
timeout of pyvmomi's connection). It keeps the ContainerView the inventory read goes through.
A session logs in with its `Access` (access.py): the credential meant for that vCenter,
sent only once its certificate passed the check the access names.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pyVim.connect import Disconnect
from pyVmomi import vim

from .access import Access
from .client import login as vcenter_login

# what the session's ContainerView of the whole inventory holds (inventory_read.py reads it)
VIEW_TYPES = (vim.Datacenter, vim.Folder, vim.ClusterComputeResource, vim.HostSystem,
              vim.Datastore, vim.Network)

log = logging.getLogger(__name__)


class Session:
    """One vCenter session, logged in on first use and again whenever the vCenter dropped it.
    Thread-safe: one read at a time (`lock`)."""

    def __init__(self, access: Access, *, timeout: float = 30.0) -> None:
        self.access = access
        self.vcenter = access.vcenter
        self.timeout = timeout
        self.lock = threading.Lock()
        self.logins = 0  # how many times this session logged in
        self.login_at: float | None = None  # the vCenter's loginTime of the current session
        self._si: vim.ServiceInstance | None = None
        self._content: Any = None
        self._view: Any = None

    def matches(self, access: Access, timeout: float) -> bool:
        """The same credential, certificate check and timeout."""
        return (access, timeout) == (self.access, self.timeout)

    def content(self) -> Any:
        """The service content of a live session: checked (currentSession), else logged in."""
        if self._content is not None:
            try:
                current = self._content.sessionManager.currentSession
            except vim.fault.NotAuthenticated:
                current = None
            except Exception as exc:  # noqa: BLE001 - a broken connection: log in again
                log.info("vcenter %s: session check failed (%s: %s); logging in again",
                         self.vcenter, type(exc).__name__, exc)
                current = None
            if current is not None:
                return self._content
            log.info("vcenter %s: session gone; logging in again", self.vcenter)
            self._drop()
        self._login()
        return self._content

    def _login(self) -> None:
        # pooled connections idle longer than the timeout are dropped rather than reused
        # (vCenter closes idle connections between syncs)
        si = vcenter_login(self.access, self.timeout, connectionPoolTimeout=self.timeout)
        self._si = si
        self._content = si.RetrieveContent()
        self.logins += 1
        current = self._content.sessionManager.currentSession
        login = getattr(current, "loginTime", None)
        self.login_at = login.timestamp() if login is not None else time.time()

    def view(self) -> tuple[Any, Any]:
        """The checked service content and the ContainerView of the whole inventory, kept
        between reads (it lives as long as the session)."""
        content = self.content()
        if self._view is None:
            self._view = content.viewManager.CreateContainerView(
                content.rootFolder, list(VIEW_TYPES), True)
        return content, self._view

    def forget_view(self) -> None:
        self._view = None

    def _drop(self) -> None:
        self._si = self._content = self._view = None

    def close(self) -> None:
        """Log out (best effort) and forget the session."""
        if self._si is not None:
            Disconnect(self._si)
        self._drop()


class Sessions:
    """The sessions of this process, one per vCenter, reused across syncs; replaced when the
    vCenter's access (credential, certificate check) or the timeout changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_vcenter: dict[str, Session] = {}

    def get(self, access: Access, timeout: float) -> Session:
        with self._lock:
            session = self._by_vcenter.get(access.vcenter)
            if session is None or not session.matches(access, timeout):
                if session is not None:
                    session.close()
                session = Session(access, timeout=timeout)
                self._by_vcenter[access.vcenter] = session
            return session

    def close(self) -> None:
        with self._lock:
            for session in self._by_vcenter.values():
                session.close()
            self._by_vcenter.clear()


SESSIONS = Sessions()
