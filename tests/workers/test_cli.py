"""`vcm` against the real workers: run as a real process, and where a test checks refusals
and their exit codes, many command lines in one process (the `cli` fixture)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from celery import Celery

from tests.support.audit import audit
from tests.support.cli_session import CliSession
from tests.support.helpers import placement_barrier
from tests.support.procs import ROOT


def vcm(stack, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args,
                           "--redis-url", stack["redis"].url],
                          cwd=ROOT, env=stack["env"], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def cli(stack) -> Iterator[CliSession]:
    """`vcm` command lines run one after another in one process, each with the stack's
    environment (tests/support/cli_session.py): a refusal checked for its message and exit
    code costs no interpreter start of its own. Each command and each exit code (0, 1, 2 and
    3) is also seen from a real `vcm` process here."""
    with CliSession(stack["env"]) as session:
        yield session


def vcm_in(cli: CliSession, stack, *args: str) -> subprocess.CompletedProcess:
    """vcm(), run in the CLI session."""
    return cli.run(*args, "--redis-url", stack["redis"].url, env=stack["env"])


def test_acquire_env_eval_and_release(stack, ledger, tmp_path):
    p = vcm(stack, "acquire", "--vcpus", "24", "--memory", "96", "--storage", "700",
            "--owner", "job-1", "-o", "env")
    assert p.returncode == 0, p.stderr
    script = tmp_path / "step.sh"
    script.write_text(p.stdout + '\necho "$VCM_LEASE_ID $VCM_POOL $VCM_PORT_GROUP $VCM_VLAN '
                      '$VCM_CIDR $VCM_GATEWAY $VCM_DATASTORE"\n')
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True).stdout.split()
    assert out[1:] == ["pool1", "ci-vlan-1001", "1001", "192.168.1.0/24", "192.168.1.1",
                       "datastore1"]
    assert out[0] in audit(ledger)["leases"]
    p = vcm(stack, "release", out[0], "--owner", "job-1", "-o", "json")
    assert p.returncode == 0 and json.loads(p.stdout) == [out[0]]
    assert audit(ledger)["leases"] == {}


def test_exit_codes(stack, ledger, cli):
    p = vcm_in(cli, stack, "acquire", "--vcpus", "24", "--memory", "5000")
    assert p.returncode == 2 and "memory" in p.stderr  # more than any pool could hold
    p = vcm_in(cli, stack, "acquire", "--vcpus", "24", "--memory", "-1")
    assert p.returncode == 2 and "memory" in p.stderr
    p = vcm_in(cli, stack, "acquire", "--vcpus", "100", "--memory", "100", "--required-pool",
               "pool3")
    assert p.returncode == 2 and "vcpus: 100 is more than any pool can hold" in p.stderr
    assert vcm_in(cli, stack, "acquire", "--vcpus", "30", "--memory", "1", "--required-pool",
                  "pool3").returncode == 0
    p = vcm(stack, "acquire", "--vcpus", "20", "--memory", "1", "--required-pool", "pool3")
    assert p.returncode == 3 and "pool3: insufficient vcpus (need 20, free 10)" in p.stderr
    p = vcm(stack, "release", "no-such-lease")
    assert p.returncode == 1 and "LeaseNotFound" in p.stderr
    p = vcm(stack, "acquire", "--vcpus", "x", "--memory", "1")
    assert p.returncode == 2
    assert "Traceback" not in p.stderr


def test_pools_table_leases_estimate_reserve(stack, ledger, cli, tmp_path):
    assert vcm_in(cli, stack, "acquire", "--vcpus", "60", "--memory", "160", "--owner",
                  "t").returncode == 0
    p = vcm(stack, "pools")
    assert p.returncode == 0
    assert "pool1" in p.stdout and "[#####.....]  50.0%" in p.stdout  # 60 of 120 vcpus
    assert "VCENTER" in p.stdout and "vcenter3.example.com" in p.stdout
    p = vcm(stack, "leases", "--owner", "t", "-o", "json")
    assert [x["status"]["owner"] for x in json.loads(p.stdout)] == ["t"]
    p = vcm(stack, "estimate", "--vcpus", "24", "--memory", "96", "-o", "json")
    assert json.loads(p.stdout)["pools"]["pool1"]["fits"] == 2
    batch = tmp_path / "batch.yaml"
    batch.write_text("requests:\n  - {vcpus: 8, memory: 8}\n"
                     "  - {vcpus: 8, memory: 8, vcenters: 3}\n")
    p = vcm(stack, "reserve", "-f", str(batch))
    assert p.returncode == 0, p.stderr
    assert len(audit(ledger)["leases"]) == 1 + 4
    before = audit(ledger)
    batch.write_text("- {vcpus: 24, memory: 8, required-pool: pool3}\n"
                     "- {vcpus: 24, memory: 8, required-pool: pool3}\n")
    p = vcm_in(cli, stack, "reserve", "-f", str(batch))
    assert p.returncode == 3 and "request #2" in p.stderr
    assert audit(ledger) == before  # holding nothing
    batch.write_text("- {vcpus: 8, memory: 8, vcpus: 80}\n")  # which vcpus was meant?
    p = vcm_in(cli, stack, "reserve", "-f", str(batch))
    assert p.returncode == 2 and "'vcpus' is given twice" in p.stderr, p.stderr
    batch.write_bytes(b"- {vcpus: 8, memory: 8, owner: \xff}\n")
    p = vcm_in(cli, stack, "reserve", "-f", str(batch))
    assert p.returncode == 2 and "not UTF-8" in p.stderr and "Traceback" not in p.stderr
    assert audit(ledger) == before


def test_a_task_lost_in_flight_is_sent_again_as_the_same_request(pools_file, tmp_path):
    """Redis's transport pops a message and then records it as unacked: a worker killed in
    between loses it (the stateful test's crash rule found this). What it leaves is a task no
    worker holds: vcm sends the same task id again, which is the same request, so however
    many copies arrive, one lease is granted."""
    from tests.support.procs import RedisServer, Worker, env_for, wait_for
    from workers.adapters.ledger import Ledger

    server = RedisServer().start()
    worker = None
    try:
        env = env_for(server.url, pools_file, VCM_MIRROR_FILE=str(tmp_path / "ledger.json"),
                      VCM_RESEND_AFTER="1s")
        client = server.client()
        cli = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "acquire", "--vcpus", "1", "--memory", "1",
             "--owner", "job-1", "-o", "json", "--redis-url", server.url],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: client.llen("placement") == 1, timeout=30, what="the task queued")
        client.delete("placement")  # what the killed worker leaves: the message is nowhere
        # two copies in line: both are taken, and answered as one request
        wait_for(lambda: client.llen("placement") >= 2, timeout=30, what="the task sent again")
        worker = Worker(env, "placement").start()  # the documented command
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err
        assert "sent it again (same task id" in err
        leases = json.loads(out)
        ledger = Ledger(client)
        assert sorted(audit(ledger)["leases"]) == [x["metadata"]["name"] for x in leases]
        assert len(leases) == 1 and leases[0]["status"]["owner"] == "job-1"
        wait_for(lambda: client.llen("placement") == 0, timeout=30, what="every copy taken")
        app = Celery("client", broker=server.url, backend=server.url)
        app.config_from_object("celeryconfig")
        app.conf.broker_url = app.conf.result_backend = server.url
        # the one consumer answers in order: once this (the cancel of a wait that never was:
        # it changes nothing) is answered, every copy was
        app.send_task("vcm.cancel_wait", kwargs={"task_id": "no-such-wait"},
                      queue="placement").get(timeout=30)
        app.close()
        assert len(audit(ledger)["leases"]) == 1
    finally:
        if worker is not None:
            worker.kill()  # thrown away: no test here looks at its shutdown
        server.stop()


def queued_releases(client) -> list[dict]:
    """The kwargs of the vcm.release messages waiting in the placement queue (kombu keeps
    them as JSON, the body base64-encoded), one per copy."""
    import base64

    out = []
    for raw in client.lrange("placement", 0, -1):
        message = json.loads(raw)
        if message["headers"].get("task") == "vcm.release":
            _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            out.append(kwargs)
    return out


def test_a_release_by_owner_or_selector_is_not_sent_again(pools_file, tmp_path):
    """A copy of a release by owner or by selector that lands late would release leases
    granted since: vcm does not send it again, however long it waits in the queue, and it is
    answered once a worker takes it. A release by id it does send again (releasing twice is
    fine)."""
    from tests.support.helpers import call
    from tests.support.procs import RedisServer, Worker, env_for, wait_for

    server = RedisServer().start()
    worker = None
    clis: dict[str, subprocess.Popen] = {}
    try:
        env = env_for(server.url, pools_file, VCM_MIRROR_FILE=str(tmp_path / "ledger.json"),
                      VCM_RESEND_AFTER="1s")
        app = Celery("client", broker=server.url, backend=server.url)
        app.config_from_object("celeryconfig")
        app.conf.broker_url = app.conf.result_backend = server.url
        worker = Worker(env, "placement").start()
        small = {"vcpus": 1, "memory": 1, "networks": 0}
        held = {how: call(app, "vcm.acquire", request={**small, **extra})[0]["metadata"]["name"]
                for how, extra in (("owner", {"owner": "job-1"}),
                                   ("selector", {"owner": "job-2", "labels": {"k": "v"}}),
                                   ("id", {"owner": "job-3"}))}
        worker.kill()  # the releases wait in the queue until a worker is back
        client = server.client()
        errs = {}
        for how, args in (("owner", ["--owner", "job-1"]), ("selector", ["-l", "k=v"]),
                          ("id", [held["id"], "--owner", "job-3"])):
            errs[how] = tmp_path / f"release-by-{how}.err"
            with errs[how].open("w") as err:
                clis[how] = subprocess.Popen(
                    [sys.executable, "-m", "workers.cli", "release", *args, "-o", "json",
                     "--redis-url", server.url], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                    stderr=err, text=True)
        # each has polled its PENDING task for 5 s (its hint says so): 4 x VCM_RESEND_AFTER
        for how, err in errs.items():
            wait_for(lambda err=err: "still queued after 5s" in err.read_text(), timeout=30,
                     what=f"the release by {how} to wait 5 s")
        copies = queued_releases(client)
        assert [c for c in copies if c.get("owner") == "job-1" and not c.get("lease_ids")] \
            == [{"lease_ids": None, "owner": "job-1", "selector": None}], copies
        assert [c for c in copies if c.get("selector")] == [
            {"lease_ids": None, "owner": None, "selector": "k=v"}], copies
        assert len([c for c in copies if c.get("lease_ids")]) >= 2, copies
        assert "sent it again" in errs["id"].read_text()
        for how in ("owner", "selector"):
            assert "sent it again" not in errs[how].read_text(), how

        worker = Worker(env, "placement").start()  # late, but each is answered
        for how, cli in clis.items():
            out, _ = cli.communicate(timeout=60)
            assert cli.returncode == 0, (how, errs[how].read_text())
            assert json.loads(out) == [held[how]], how
        placement_barrier(app, timeout=30)
        assert client.llen("placement") == 0  # every copy was taken, in order
        app.close()
    finally:
        for cli in clis.values():
            if cli.poll() is None:
                cli.kill()
                cli.communicate()
        if worker is not None:
            worker.kill()  # thrown away: no test here looks at its shutdown
        server.stop()


def test_an_unreachable_redis_is_named_without_its_password(pools_file):
    """The Redis URL carries the password (deploy/ builds it from the Secret): a message
    naming the Redis vcm cannot reach shows where it is, never the password, whether the URL
    came from --redis-url or VCM_REDIS_URL, with or without a user name."""
    from tests.support.procs import env_for, free_port

    secret = "s3cret-Pa55word"
    port = free_port()  # nothing listens there
    runs: list[tuple[str, str, subprocess.Popen]] = []
    try:
        # all at once: each spends its seconds waiting for Redis, not computing
        for url, shown in ((f"redis://:{secret}@127.0.0.1:{port}/0",
                            f"redis://:**@127.0.0.1:{port}/0"),
                           (f"redis://vcm:{secret}@127.0.0.1:{port}/2?socket_timeout=3",
                            f"redis://vcm:**@127.0.0.1:{port}/2?socket_timeout=3")):
            for how in ("--redis-url", "VCM_REDIS_URL"):
                args = ["pools", "--redis-url", url] if how == "--redis-url" else ["pools"]
                runs.append((how, shown, subprocess.Popen(
                    [sys.executable, "-m", "workers.cli", *args], cwd=ROOT,
                    env=env_for(url, pools_file), stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)))
        for how, shown, p in runs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 1, (how, p.returncode, err)
            assert f"vcm: cannot reach Redis at {shown}: " in err, (how, err)
            assert secret not in err + out, (how, err)
    finally:
        for _, _, p in runs:
            if p.poll() is None:
                p.kill()
                p.communicate()
