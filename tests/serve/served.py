"""What the real-client tests share: start `EXE serve` on a free loopback port and read
its URL from the start line, stop it with SIGTERM (checking it drains and exits 0), and
assert that a call raises a given client error naming what it should."""
import re
import subprocess
import sys
import time


def start(args, expect):
    """Starts `args` (the executable and `serve ...`), returns (process, base URL) once
    its start line (which must contain `expect`) names the URL."""
    p = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 120:
        line = p.stderr.readline()
        if not line:
            raise SystemExit(f"the server exited: {p.wait()}")
        sys.stderr.write(line)
        m = re.search(r"on (http://[0-9.:]+)/v1", line)
        if m:
            assert expect in line, line
            return p, m.group(1)
    raise SystemExit("the server did not start in 120 s")


def stop(proc):
    """SIGTERM, then the exit status must be 0 (running requests drained)."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    assert proc.returncode == 0, f"serve exited with {proc.returncode} on SIGTERM"


def raises(cls, fn, *needles):
    """`fn()` raises `cls` whose message contains every needle; returns the error."""
    try:
        fn()
    except cls as e:
        msg = str(e)
        for n in needles:
            assert n in msg, f"{cls.__name__}: {msg!r} lacks {n!r}"
        return e
    raise AssertionError(f"expected {cls.__name__}")
