"""The test helper that gives child processes their ports: one port is never handed out twice in
a process (an API and a Flower started side by side were once given the same one)."""

from tests.support.procs import free_port


def test_ports_handed_out_in_one_process_are_all_different():
    # 2,000 draws from some 17,000 ports would repeat one almost surely if drawn independently
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)
