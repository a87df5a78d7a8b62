"""The configuration problems that stop every process at start, shared by the process tests
(tests/workers/test_start_commands.py: each role started with its documented command) and the
tests of the checks those commands run (tests/unit/test_start_checks.py: every problem)."""

from __future__ import annotations

from pathlib import Path

import yaml

GOOD_POOL = {"name": "p1", "vcenter": "vc1", "datacenter": "dc", "cluster": "c1",
             "datastore": "ds", "vcpus": 16, "memory": 64, "storage": 1000,
             "networks": [{"port-group": "pg1", "vlan": 1}]}

# each: the pools file's text, and what the message must say after `invalid configuration:
# <file>: ` (the pool and the field it names)
INVALID_POOLS = {
    "unknown key": (yaml.safe_dump({"pools": [
        GOOD_POOL, {**GOOD_POOL, "name": "p2", "vcenter": "vc2", "colour": "red"}]}),
        "pool 'p2': field 'colour'"),
    "negative budget": (yaml.safe_dump({"pools": [
        GOOD_POOL, {**GOOD_POOL, "name": "p2", "vcenter": "vc2", "memory": -64}]}),
        "pool 'p2': field 'memory'"),
    "duplicate pool names": (yaml.safe_dump({"pools": [GOOD_POOL, {**GOOD_POOL,
                                                                   "vcenter": "vc2"}]}),
                             "pool 'p1': field 'name'"),
    # YAML reads `1:` as a number: the message names it like any other unknown key
    "top-level key that is not text": (
        yaml.safe_dump({"pools": [GOOD_POOL]}) + "1: 2\n",
        "field '1': the top level must be a map with only 'pools'"),
}

# each: the variable, its value ({port}: a port where a Redis answers), and what the message
# must hold after `invalid setting ` (every role reads them all, in workers.settings)
INVALID_SETTINGS = {
    "a Redis URL of another scheme": ("VCM_REDIS_URL", "http://127.0.0.1:{port}/0",
                                      ["VCM_REDIS_URL: ", "redis:// or rediss://"]),
    "a Redis URL whose port is out of range": ("VCM_REDIS_URL", "redis://127.0.0.1:{port}0000/0",
                                               ["VCM_REDIS_URL: ", "port"]),
    "a Redis URL whose database is not a number": ("VCM_REDIS_URL",
                                                   "redis://127.0.0.1:{port}/zero",
                                                   ["VCM_REDIS_URL: ", "database"]),
    # redis-py would hand the ledger's replies back as text, Celery's broker refuse it
    "a Redis URL with a query option no client takes": (
        "VCM_REDIS_URL", "redis://127.0.0.1:{port}/0?decode_responses=true",
        ["VCM_REDIS_URL: query option 'decode_responses' is not one vcm takes"]),
    # every running task handed out again each second
    "a visibility timeout of 0": ("VCM_VISIBILITY_TIMEOUT", "0",
                                  ["VCM_VISIBILITY_TIMEOUT='0': a "]),
    # answers held for ever
    "a commit window of 1e20 s": ("VCM_MIRROR_COMMIT_WINDOW", "1e20",
                                  ["VCM_MIRROR_COMMIT_WINDOW='1e20': a "]),
}


def pools_message(path: str | Path, problem: str) -> str:
    return f"invalid configuration: {path}: {INVALID_POOLS[problem][1]}"


def setting_messages(problem: str) -> list[str]:
    """What the message must hold; it starts with the first."""
    first, *rest = INVALID_SETTINGS[problem][2]
    return [f"invalid setting {first}", *rest]
