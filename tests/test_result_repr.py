"""The worker's result text (log line, task-succeeded event): the builtin repr for JSON results,
Celery's saferepr for anything else or anything large."""

from __future__ import annotations

import celery.app.trace
from celery.utils.saferepr import saferepr

from tasks import REPR_BUDGET, result_repr

LEASE = {"spec": {"vcpus": 2, "memory": 4}, "status": {"pool": "p1", "networks": [
    {"port-group": "pg-1", "vlan": 7, "cidr": None}], "weight": 1.5, "ok": True},
    "metadata": {"name": "lease-abc"}}


def test_json_results_read_as_the_builtin_repr():
    assert result_repr([LEASE], 4096) == repr([LEASE])
    assert result_repr(None, 1024) == "None"
    assert result_repr(["a", "b"]) == "['a', 'b']"


def test_long_text_is_cut_at_maxlen():
    text = result_repr([LEASE] * 5, 100)
    assert text == repr([LEASE] * 5)[:100] + "..."


def test_other_types_and_large_values_keep_saferepr():
    odd = [{"when": object()}]
    assert result_repr(odd, 1024) == saferepr(odd, 1024)
    big = [{"i": i} for i in range(REPR_BUDGET)]
    assert result_repr(big, 300) == saferepr(big, 300)
    assert len(result_repr(big, 300)) < 400


def test_the_worker_trace_uses_it():
    assert celery.app.trace.saferepr is result_repr
