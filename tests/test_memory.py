"""gdet.memory: freed host memory stays in the process, so a loop of large tensors stops faulting pages in."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A loop that allocates, fills and frees a 64 MB tensor, as a network does with each chunk's activations; prints
# whether gdet.memory is in effect and the minor page faults of each pass.
LOOP = """
import resource, sys, torch
from gdet.cli import run_guarded
import gdet.memory as memory
run_guarded(lambda: None)           # every command's entry turns it on
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(64 * 2**20 // 4)
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(memory._state, *[faults() for _ in range(24)])
"""
PAGES = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")


def _run(**env) -> tuple[bool, list[int]]:
    full = {k: v for k, v in os.environ.items() if k != "GDET_SYSTEM_MALLOC"}
    full.update(env, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", LOOP], env=full, capture_output=True, text=True, check=True)
    state, *faults = out.stdout.split()
    return state == "True", [int(f) for f in faults]


def _thp_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused():
    kept, faults = _run()
    assert kept
    # The heap may grow for a few passes while freed blocks coalesce; after that a pass faults nothing in.
    assert max(faults[-8:]) < PAGES // 100, faults
    system, plain = _run(GDET_SYSTEM_MALLOC="1")
    assert not system
    if not _thp_always():  # with transparent huge pages always on, a fresh pass faults 2 MB pages, not 4 kB ones
        # The control: without it every pass maps the tensor afresh and faults each of its pages in.
        assert min(plain[-8:]) >= PAGES * 0.9, plain


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("value, kept", [("0", True), ("", True), ("1", False), ("yes", False)])
def test_only_a_set_opt_out_keeps_the_system_allocator(monkeypatch, value, kept):
    import gdet.memory as memory

    monkeypatch.setenv("GDET_SYSTEM_MALLOC", value)
    monkeypatch.setattr(memory, "_state", None)
    monkeypatch.setattr(memory, "_apply", lambda: True)  # the decision alone; the allocator is left as it is
    assert memory.keep_freed_memory() is kept
