"""Backoff between retries: one policy for the project, on tenacity's wait strategies.

0.2 s doubling to 10 s. A call retried in place: ``tenacity.Retrying(wait=doubling())`` (or
``jittered()`` where several writers contend). A loop with other work to do between attempts
(it schedules its own retries): ``Backoff``.
"""

from __future__ import annotations

from tenacity import RetryCallState, Retrying, wait_exponential, wait_random_exponential
from tenacity.wait import wait_base

BASE = 0.2
CAP = 10.0


def doubling(base: float = BASE, cap: float = CAP) -> wait_base:
    """base, 2 x base, 4 x base ... up to cap."""
    return wait_exponential(multiplier=base, max=cap)


def jittered(base: float = BASE, cap: float = CAP) -> wait_base:
    """'Full jitter': uniform(0, the doubling delay), so that contending writers spread out."""
    return wait_random_exponential(multiplier=base, max=cap)


class Backoff:
    """The delays of one streak of failures: ``next()`` before each retry, ``reset()`` after
    a success."""

    def __init__(self, wait: wait_base | None = None) -> None:
        self.wait = wait if wait is not None else doubling()
        self._state = RetryCallState(Retrying(wait=self.wait), None, (), {})
        self.reset()

    def reset(self) -> None:
        self._state.attempt_number = 0

    def next(self) -> float:
        self._state.attempt_number += 1
        return float(self.wait(self._state))


__all__ = ["BASE", "CAP", "Backoff", "doubling", "jittered"]
