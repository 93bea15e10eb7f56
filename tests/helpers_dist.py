"""Launching several processes in tests: a free loopback port and a two-rank torchrun of a gdet command."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, cwd, nproc: int = 2, timeout: float = 240) -> str:
    """Run ``torchrun --nproc_per_node=nproc ARGS`` (gloo on loopback, one thread per rank) and return its stdout;
    fail the test with the end of stderr on a non-zero exit, and kill every rank on a timeout."""
    exe = Path(sys.executable).with_name("torchrun")
    if not exe.exists():
        pytest.skip("torchrun not installed beside the interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GDET_NO_PROGRESS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    # Own session, so a timeout kills torchrun's workers too (they would otherwise wait for a rendezvous).
    p = subprocess.Popen([str(exe), f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                          f"--master_port={free_port()}", *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"torchrun did not finish in {timeout:.0f} s")
    assert p.returncode == 0, err[-2000:]
    return out
