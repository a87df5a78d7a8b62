"""`vcm leases -o lease-files` refuses, as a process and before asking the workers for
anything, a DIR, --ca-certs or --resource-pool that govc.sh cannot name: arguments that are
not UTF-8 (Python reads their bytes as lone surrogates), and resource pool names that are no
single name below a cluster's Resources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import ROOT


def vcm(tmp_path: Path, *args: str | bytes) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           # nothing listens there: a refusal must come before any Redis is asked
           "VCM_REDIS_URL": "redis://127.0.0.1:1/0"}
    accounts = tmp_path / "accounts.sh"
    accounts.write_text("vcenter_usernames=(u)\nvcenter_passwords=('p')\n")
    return subprocess.run([sys.executable, "-m", "workers.cli", "leases", "-l",
                           "boskos-lease-id=b", "-o", "lease-files", "--credentials",
                           str(accounts), *args], env=env, cwd=ROOT, capture_output=True,
                          timeout=60)


@pytest.mark.parametrize(("args", "says"), [
    ([b"DIR-\xff"], "DIR: "),
    ([b"dir", b"--ca-certs", b"/ca-\xff.pem"], "--ca-certs: "),
    ([b"dir", b"--resource-pool", b"rp-\xff"], "--resource-pool: "),
    ([b"dir", b"--resource-pool", b".."], "--resource-pool: "),
    ([b"dir", b"--resource-pool", b"a\xc2\x85b"], "--resource-pool: "),
])
def test_arguments_govc_sh_cannot_name_are_refused_before_anything_is_asked(tmp_path, args,
                                                                            says):
    p = vcm(tmp_path, *[tmp_path / a.decode("utf-8", "surrogateescape") if i == 0 else a
                        for i, a in enumerate(args)])
    stderr = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 2, (p.returncode, stderr)
    assert stderr.startswith(f"vcm: {says}"), stderr
    assert "Traceback" not in stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["accounts.sh"]  # no DIR made
