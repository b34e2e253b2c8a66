"""Two processes with per-device batch 2 train like one process with batch 4.

Accelerate 1.15's ``accelerate launch --cpu --num_processes 2`` starts ONE process unless MPI
is configured (its simple launcher); the torchrun-based launcher is ``--multi_gpu``, which on
a machine without GPUs (or with ``ACCELERATE_USE_CPU=true``) runs gloo data-parallel on CPU.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.train.run_dir import read_jsonl

SCRIPT = Path(__file__).resolve().parent / "ddp_run.py"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str]) -> None:
    env = dict(
        os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_processes_match_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, str(SCRIPT), str(one), "4"])
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
    ]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port()), str(SCRIPT), str(two), "2"]
    run(launch)
    a = [r for r in read_jsonl(one / "metrics.jsonl") if "loss" in r]
    b = [r for r in read_jsonl(two / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]  # 2 x 2 per step, 20 examples
    for ra, rb in zip(a, b, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-4)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4)
        assert ra["lr"] == rb["lr"]
    # only the main process wrote: one line per record, one rng state per process
    assert len(read_jsonl(two / "metrics.jsonl")) == len(read_jsonl(one / "metrics.jsonl"))
    ckpt = two / "checkpoints" / "step-4"
    assert (ckpt / "rng_state_0.pt").exists() and (ckpt / "rng_state_1.pt").exists()
