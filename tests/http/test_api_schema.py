"""Schema-driven: requests generated from /openapi.json by schemathesis (valid ones and
deliberately invalid ones), sent to the real server: the same 400 in every `make test`, and
thousands of fresh ones in `make chaos` (VCM_CHAOS=1, VCM_CHAOS_REQUESTS). The stack is healthy
throughout, so no 5xx at all, but for the one a client asks for: 504 WaitTimeout for an acquire
whose `wait` ran out in line. Every error is the error JSON, and the ledger keeps its
invariants."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.support.api import ApiServer
from tests.support.helpers import check_invariants
from workers.adapters.pools_file import load_pools

# generating a case costs the test far more CPU than the server spends answering it
CHAOS = os.environ.get("VCM_CHAOS") == "1"
EXAMPLES = int(os.environ.get("VCM_CHAOS_REQUESTS", "3000")) if CHAOS else 400


@pytest.fixture(scope="module")
def api(stack):
    # short synchronous waits: a generated `wait` parks for at most a second
    server = ApiServer(stack["env"], VCM_API_MAX_SYNC_WAIT="1").start()
    yield server
    server.stop()


def tame(case) -> None:
    """Generated waits are fine synchronously (capped above), but an async request would park
    in the worker's line for as long as it says and hold pools for later tests."""
    if isinstance(case.query, dict) and "async" in case.query and isinstance(case.body, dict):
        case.body.pop("wait", None)


def test_generated_requests(api, ledger, pools_file):
    schema = schemathesis.openapi.from_url(api.url + "/openapi.json")
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE),
                      schema.as_strategy(GenerationMode.NEGATIVE))
    local = threading.local()
    seen: Counter = Counter()
    problems: list[str] = []

    def send(case) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        tame(case)
        resp = case.call(base_url=api.url, session=local.session, timeout=30)
        code = resp.status_code
        seen[(case.method, case.path, code)] += 1
        where = f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"
        if code >= 500 and not waited_in_vain(case, code, resp.text):
            problems.append(f"{code} for {where}: {resp.text[:300]}")
            return
        if case.path == "/metrics" and code == 200:
            return
        kind = {k.lower(): v for k, v in resp.headers.items()}.get("content-type") or [""]
        kind = kind[0] if isinstance(kind, list) else kind
        if not kind.startswith("application/json"):
            problems.append(f"not JSON ({kind}) for {where}")
            return
        body = json.loads(resp.text)
        if code >= 400 and not (isinstance(body, dict)
                                and set(body) == {"error", "message", "details"}):
            problems.append(f"{code} without the error JSON for {where}: {resp.text[:300]}")

    # sent by 8 clients at once, while the next cases are being generated: faster, and
    # concurrency is part of the test
    slots = threading.BoundedSemaphore(16)

    def send_then_free(case) -> None:
        try:
            send(case)
        except Exception as exc:  # noqa: BLE001 - reported below, with the case
            problems.append(f"{type(exc).__name__}: {exc} for {case.method} {case.path}")
        finally:
            slots.release()

    with ThreadPoolExecutor(8) as pool:

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not CHAOS,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=cases)
        def run(case) -> None:
            slots.acquire()
            pool.submit(send_then_free, case)

        run()
    total = sum(seen.values())
    summary: Counter = Counter()
    for (method, path, code), n in seen.items():
        summary[f"{method} {path} {code}"] += n
    print(f"\n{total} generated requests:", dict(sorted(summary.items())))
    assert not problems, "\n".join(problems[:20])
    assert total >= EXAMPLES * 0.9, total
    # both kinds of answers were exercised, not only rejections
    assert seen_any(seen, "/acquire", 200) and seen_any(seen, "/estimate", 200)
    assert seen_any(seen, "/acquire", 422) and seen_any(seen, "/acquire", 400)
    check_invariants(ledger, {p.name: p for p in load_pools(str(pools_file))})


def waited_in_vain(case, code: int, text: str) -> bool:
    """504 WaitTimeout: a synchronous acquire that asked to wait in line (a positive `wait`,
    at most the server's 1 s) and got nothing in time. Not an outage: the answer it asked for."""
    if code != 504 or case.method != "POST" or case.path != "/acquire":
        return False
    if not isinstance(case.body, dict) or case.body.get("wait") in (None, 0, "0", ""):
        return False
    try:
        return json.loads(text).get("error") == "WaitTimeout"
    except ValueError:
        return False


def seen_any(seen: Counter, path: str, code: int) -> bool:
    return any(p == path and c == code for (_, p, c) in seen)
