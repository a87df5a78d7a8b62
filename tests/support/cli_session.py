"""Many `vcm` command lines in one Python process, for hostile-input loops: a test that tries
dozens of bad arguments pays one interpreter start and one import of the CLI (about half a
second of CPU each) instead of one per input.

`CliSession` starts `python -m tests.support.cli_session` (cwd ROOT) and sends it one command
line at a time; the child runs `workers.cli.main(argv)`, which the `vcm` entry point runs,
with the environment given for that run as os.environ, and answers what a process would
have left: the exit code (main's return value; SystemExit's code, a message printed and 1
for a non-integer one, as the interpreter does; 1 and the traceback on stderr for anything
else that escapes), and the bytes written to stdout and stderr, encoded as the interpreter
encodes them on a pipe (stderr with backslashreplace). What the child writes to its real
stderr meanwhile (file descriptor 2: logging handlers made before, C code) is added to that
run's stderr. stdin is empty. Arguments given as bytes are decoded as the interpreter decodes
argv (os.fsdecode: undecodable bytes become lone surrogates).

A command that leaves a non-daemon thread running is answered once that thread ends, as a
process exits only then (one left running for ever: `run` times out, as a process would never
exit). What one process per input would show and this does not: whatever a command changes in
the process that outlives it (module state, caches), atexit handlers. Tests keep at least
one run through a real `vcm` process for the path from the command line to the exit status."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class CliSession:
    """The child process; `run` is a drop-in for subprocess.run([vcm, *args], text=True)."""

    def __init__(self, env: dict[str, str], cwd: Path = ROOT) -> None:
        self.env = dict(env)
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.cli_session"],
                                     cwd=cwd, env=self.env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log)

    def run(self, *args: str | bytes, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """One command line (`vcm` left out), with `env` (default: the session's) as its
        whole environment."""
        argv = [os.fsdecode(a) for a in args]
        request = {"argv": argv, "env": dict(env if env is not None else self.env)}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.close()
                raise TimeoutError(f"vcm {argv!r} gave no answer within {timeout:g}s")
            chunk = self.proc.stdout.readline()
            if not chunk:
                self.log.seek(0)
                raise RuntimeError(f"the CLI session exited {self.proc.wait()}: "
                                   f"{self.log.read().decode(errors='replace')[-3000:]}")
            line += chunk
        answer = json.loads(line)
        out, err = (base64.b64decode(answer[k]).decode(errors="replace")
                    for k in ("stdout", "stderr"))
        return subprocess.CompletedProcess(["vcm", *argv], answer["code"], out, err)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.log.close()

    def __enter__(self) -> CliSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the child ---------------------------------------------------------------------------------

class _Sink(io.RawIOBase):
    """Where the child's sys.stdout or sys.stderr writes: the current run's buffer."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # noqa: ANN001 - a bytes-like object
        self.data += bytes(b)
        return len(b)

    def take(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        return data


def _stream(like: io.TextIOWrapper, errors: str) -> tuple[_Sink, io.TextIOWrapper]:
    sink = _Sink()
    return sink, io.TextIOWrapper(sink, encoding=like.encoding, errors=errors,
                                  write_through=True)


def _serve() -> None:
    # the protocol gets its own descriptors; 0 reads nothing, 1 goes where 2 goes
    requests = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    out_sink, out = _stream(sys.__stdout__, sys.__stdout__.errors)
    err_sink, err = _stream(sys.__stderr__, "backslashreplace")
    real_err = os.fstat(2)
    from workers.cli import main

    for line in requests:
        request = json.loads(line)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["vcm", *request["argv"]]
        sys.stdin, sys.stdout, sys.stderr = io.StringIO(""), out, err
        before = os.lseek(2, 0, os.SEEK_END) if _seekable(real_err) else None
        running = set(threading.enumerate())
        try:
            code = main(request["argv"])
        except SystemExit as exc:
            code = exc.code
            if code is None:
                code = 0
            elif not isinstance(code, int):
                print(code, file=err)
                code = 1
        except BaseException:  # noqa: BLE001 - what the interpreter would print
            traceback.print_exc(file=err)
            code = 1
        # a process exits only once its non-daemon threads have ended: wait for those the
        # command left running, as the interpreter would (a command that leaves one running
        # for ever makes `run` time out, as a process would never exit)
        for thread in set(threading.enumerate()) - running:
            if not thread.daemon and thread is not threading.main_thread():
                thread.join()
        out.flush()
        err.flush()
        stray = b""
        if before is not None:
            after = os.lseek(2, 0, os.SEEK_END)
            stray = os.pread(2, after - before, before) if after > before else b""
        answer = {"code": code, "stdout": base64.b64encode(out_sink.take()).decode(),
                  "stderr": base64.b64encode(err_sink.take() + stray).decode()}
        answers.write(json.dumps(answer).encode() + b"\n")
        answers.flush()


def _seekable(st: os.stat_result) -> bool:
    import stat

    return stat.S_ISREG(st.st_mode)


if __name__ == "__main__":
    _serve()
