"""tfe_lite.allocator: freed memory stays with the process (no page faults to reuse it), where tfe_lite sets
up players; the user's own settings and TFE_LITE_MALLOC=system are respected; a bad value is refused.

Each case runs in a fresh interpreter: malloc's settings belong to the process."""

import ast
import os
import platform
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the settings are glibc's (elsewhere malloc is left alone: test_other_libc_is_left_alone)")

# In a thread of its own (so in an arena other than the main one, as TensorFlow's threads are): rounds of
# four 8 MiB blocks allocated, written and freed; the page faults of each round.
PROBE = """
import ctypes, resource, threading
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
SIZE, COUNT, ROUNDS = 8 << 20, 4, 5
faults = []
def rounds():
    for _ in range(ROUNDS):
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        blocks = [libc.malloc(SIZE) for _ in range(COUNT)]
        for block in blocks:
            ctypes.memset(block, 1, SIZE)
        for block in blocks:
            libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
worker = threading.Thread(target=rounds)
worker.start()
worker.join()
print(repr(faults))
"""
PAGES = 4 * (8 << 20) // 4096  # pages written per round


def run(setup: str, env: dict[str, str] | None = None) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "TFE_LITE_MALLOC"))}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(setup) + PROBE], env={**environ, **(env or {})},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()


def later_rounds(lines: list[str]) -> list[int]:
    return ast.literal_eval(lines[-1])[1:]  # the first round faults its pages in, whatever the settings


@glibc
def test_freed_memory_is_reused_without_page_faults():
    lines = run("from tfe_lite.allocator import keep_freed_memory\nprint(keep_freed_memory())\n")
    assert lines[0] == "glibc malloc keeps freed memory: trim threshold 1 GiB, mmap threshold 32 MiB"
    assert max(later_rounds(lines)) < PAGES // 100


@glibc
def test_system_malloc_faults_freed_memory_in_again():
    """The same rounds under glibc's own settings: the cost the tuning removes (and proof the probe sees it)."""
    lines = run("from tfe_lite.allocator import keep_freed_memory\nprint(keep_freed_memory())\n",
                env={"TFE_LITE_MALLOC": "system"})
    assert lines[0] == "system malloc (TFE_LITE_MALLOC=system)"
    assert min(later_rounds(lines)) > PAGES // 2


@glibc
def test_local_config_applies_it():
    lines = run("import tfe_lite\ntfe_lite.LocalConfig()\n")
    assert max(later_rounds(lines)) < PAGES // 100


@glibc
def test_a_users_glibc_variable_wins():
    lines = run("from tfe_lite.allocator import keep_freed_memory\nprint(keep_freed_memory())\n",
                env={"MALLOC_TRIM_THRESHOLD_": str(128 << 10)})
    assert lines[0] == "glibc malloc keeps freed memory: trim threshold from MALLOC_TRIM_THRESHOLD_, mmap threshold 32 MiB"
    assert min(later_rounds(lines)) > PAGES // 2  # the user's small trim threshold hands the blocks back


def test_applied_once(monkeypatch):
    from tfe_lite import allocator

    first = allocator.keep_freed_memory()
    monkeypatch.setenv(allocator.ENV, "system")
    assert allocator.keep_freed_memory() == first


@glibc
def test_bad_value_is_refused():
    setup = """
        from tfe_lite.allocator import keep_freed_memory
        from tfe_lite.errors import ConfigError
        try:
            keep_freed_memory()
        except ConfigError as error:
            print(error)
        """
    lines = run(setup, env={"TFE_LITE_MALLOC": "jemalloc"})
    assert lines[0] == ("Received an invalid value for the environment variable `TFE_LITE_MALLOC`, expected 'tuned' "
                        "or 'system'. Received: 'jemalloc'")


def test_other_libc_is_left_alone(monkeypatch):
    from tfe_lite import allocator

    monkeypatch.setattr(allocator, "_outcome", None)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    monkeypatch.delenv(allocator.ENV, raising=False)
    assert allocator.keep_freed_memory() == f"system malloc (not glibc: {platform.system()} musl)"
