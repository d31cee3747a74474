"""benchmarks/multihost.py end to end on a tiny case: it starts its players, runs both modes, prints every
ratio, probe and breakdown it promises, and stops its processes (the figures themselves are the README's);
benchmarks/remote_call_cpu.py likewise."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "multihost.py"


@pytest.mark.slow
@pytest.mark.parametrize("comparison", ["auto", "dealt"])
def test_the_benchmark_runs_and_reports_its_breakdown(comparison):
    run = subprocess.run([sys.executable, str(SCRIPT), "--size", "32", "--batches", "1", "--repeats", "1",
                          "--comparison", comparison], capture_output=True, text=True, timeout=600)
    out = run.stdout
    assert run.returncode == 0, run.stderr[-3000:]
    assert out.count(" ready at 127.0.0.1:") == 4
    for case in ("private 32x32 matmul", "LeNet private inference, batch 1"):
        assert re.search(rf"{re.escape(case)}\s+multi-host / local: [\d.]+x  \(target <= 1\.5x: (met|MISSED)\)", out), case
    assert re.search(r"a call reaching every served player costs [\d.]+ ms .*\([\d.]+ ms reaching server0 alone\)", out)
    assert re.search(r"a link carries [\d.]+ GB/s|a link: no measurable cost over local mode's copy", out)
    rounds = int(re.search(r"LeNet private inference, batch 1: (\d+) rounds \(traced graph\)", out)[1])
    assert rounds == (27 if comparison == "auto" else 55)  # the assisted comparison's 3 rounds against 7
    # the per-round and per-message costs are differences of two medians: one run on a busy machine may make
    # them negative, so the breakdown's parts are signed
    assert re.search(r"batch 1: [\d.]+ \(fixed\) \+ -?[\d.]+ \(\d+ rounds\) \+ -?[\d.]+ \(\d+ more messages\) \+ [\d.]+ "
                     r"\([\d.]+ MB\) \+ [\d.]+ \(local mode\) = -?[\d.]+ ms; measured [\d.]+ ms", out), out
    assert re.search(r"LeNet batch 1\s+multi-host [\d.]+ ms vs CrypTen", out)
    for case in ("private 32x32 matmul", "LeNet private inference, batch 1"):
        assert re.search(rf"{re.escape(case)}\s+local\s+[\d.]+ ms, multi-host\s+[\d.]+ ms \(driver [\d.]+, server0 [\d.]+, "
                         rf"server1 [\d.]+, .*\): [\d.]+x", out), case
    assert re.search(r"LeNet private inference, batch 1\s+wire\s+[\d,]+\s+count\s+[\d,]+", out)
    assert re.search(r"the private 32x32 matmul by link, the protocol's count over 3 runs: \d+ messages", out)
    # its traced functions are freed while the players serve (after they stopped, TensorFlow logs an error for each)
    assert "Failed to remove function remotely" not in run.stderr


def test_the_remote_call_probe_reports_each_process():
    """benchmarks/remote_call_cpu.py (the fixed cost of a call, in plain TensorFlow) on two servers."""
    script = SCRIPT.with_name("remote_call_cpu.py")
    run = subprocess.run([sys.executable, str(script), "--players", "2", "--calls", "5"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for k, reached in ((1, r"p0 [\d.]+"), (2, r"p0 [\d.]+, p1 [\d.]+")):
        assert re.search(rf"k={k}: [\d.]+ ms per call; CPU ms per call: driver [\d.]+, {reached} \(all [\d.]+\)", run.stdout), run.stdout
