"""Freed host memory is kept for reuse: a later step's buffers do not page-fault."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from alignkit.host_memory import glibc_mallopt_available

PROBE = textwrap.dedent(
    """
    import ctypes, resource, sys
    from alignkit.host_memory import keep_freed_host_memory
    if sys.argv[1] == "keep":
        assert keep_freed_host_memory()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 4 * 2**20
    def step():  # like one step's gradients: 40 buffers of 4 MiB, touched, freed
        buffers = [libc.malloc(size) for _ in range(40)]
        for b in buffers:
            ctypes.memset(b, 1, size)
        for b in buffers:
            libc.free(b)
    step()
    step()  # glibc's dynamic mmap threshold has adapted to the buffers' size by now
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def minor_faults_of_a_later_step(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not glibc_mallopt_available(), reason="glibc mallopt only")
def test_later_steps_reuse_the_freed_pages():
    default = minor_faults_of_a_later_step("default")
    kept = minor_faults_of_a_later_step("keep")
    # 160 MiB is 40960 pages of 4 KiB: by default the freed heap top is trimmed, and
    # each page is faulted in again
    assert default > 10_000
    assert kept < default / 20


def test_keep_freed_host_memory_is_idempotent():
    from alignkit.host_memory import keep_freed_host_memory

    first = keep_freed_host_memory()
    assert keep_freed_host_memory() == first == glibc_mallopt_available()


@pytest.mark.parametrize("keep", [True, False])
def test_engine_applies_the_setting_on_cpu_when_asked(tmp_path, monkeypatch, keep):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from engine_helpers import make_config, tiny_model

    from alignkit.train import engine as engine_module

    calls = []
    monkeypatch.setattr(engine_module, "keep_freed_host_memory", lambda: calls.append(1))
    engine_module.Engine(make_config(tmp_path, keep_host_memory=keep), tiny_model())
    assert calls == ([1] if keep else [])
