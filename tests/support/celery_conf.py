"""celeryconfig (the settings every worker, beat and client loads) as environments make it:
one process imports it under each environment in turn (the module is executed afresh each
time, as a process starting with that environment would), so that checking several values
of a VCM_* variable costs one interpreter start, not one each."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from tests.support.procs import ROOT

_PROBE = """
import importlib, json, os, sys
out = []
for env in json.load(sys.stdin):
    os.environ.clear()
    os.environ.update(env)
    if "celeryconfig" in sys.modules:
        conf = importlib.reload(sys.modules["celeryconfig"])
    else:
        import celeryconfig as conf
    out.append({name: getattr(conf, name) for name in NAMES})
json.dump(out, sys.stdout)
"""


def celeryconfig_under(envs: Sequence[Mapping[str, str]],
                       names: Sequence[str] = ("beat_schedule", "task_routes")
                       ) -> list[dict[str, Any]]:
    """For each environment (whole, PYTHONPATH set to the repository), celeryconfig's
    `names` (JSON-shaped values)."""
    code = f"NAMES = {list(names)!r}\n{_PROBE}"
    given = [{**env, "PYTHONPATH": str(ROOT)} for env in envs]
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=given[0],
                       input=json.dumps(given), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)
