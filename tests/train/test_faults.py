"""Faults a run must survive: kill -9 at any moment (also while a checkpoint is being
written), and Ctrl-C. Each run is a real `python -m alignkit` process on the tiny model.

The moments are hit exactly with the engine's test hook (``ALIGNKIT_TEST_PAUSE_AT``,
:func:`alignkit.train.checkpoint.pause_for_fault_tests`): the run creates a marker file at
the named point and waits there while the file exists, so the test kills (or interrupts) it
at that point and nowhere else.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignkit.train.checkpoint import PAUSE_AT_ENV, PAUSE_FILE_ENV
from alignkit.train.run_dir import read_jsonl

STEPS = 6
COMMON = ["--model", "tiny-random-llama", "--dataset", "demo", "--batch-size", "2"]
COMMON += ["--save-every", "1", "--log-every", "1", "--keep-last-checkpoints", "2"]
COMMON += ["--eval-fraction", "0", "--no-report-to-tensorboard"]
SFT = ["sft", *COMMON, "--max-steps", str(STEPS), "--gradient-accumulation-steps", "1"]
SFT += ["--max-length", "64"]
GRPO = ["grpo", *COMMON, "--max-steps", "4", "--num-generations", "2", "--max-new-tokens", "6"]
GRPO += ["--reward", "{demo_judge: true}", "--max-length", "96"]
FIRST_CTRL_C = "alignkit: interrupted: stopping after this update to write a checkpoint"


def sigint_as_at_a_terminal() -> None:
    """A process started in the background by a non-interactive shell (CI, `make test &`)
    inherits SIGINT ignored, and a run then rightly ignores Ctrl-C; the runs here get
    SIGINT as a terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def interactive_sigint():
    """This process's SIGINT as at a terminal (KeyboardInterrupt), for the test's length."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class Run:
    """One `python -m alignkit ...` process writing to ``out``; its output goes to files."""

    def __init__(self, argv: list[str], out: Path, *, pause_at: str | None = None):
        self.out = out
        self.marker = out.parent / f"{out.name}.paused"
        self.marker.unlink(missing_ok=True)
        self.log = out.parent / f"{out.name}.{time.monotonic_ns()}.log"
        env = dict(os.environ, **{PAUSE_AT_ENV: pause_at or "", PAUSE_FILE_ENV: str(self.marker)})
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "alignkit", *argv, "--output-dir", str(out)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                preexec_fn=sigint_as_at_a_terminal,
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_until_paused(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not self.marker.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended before its pause point:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"the run never reached its pause point:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def wait_for_output(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                pytest.fail(f"the run never printed {text!r}:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=60) == -signal.SIGKILL

    def finish(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)


def completed(argv: list[str], out: Path) -> Run:
    run = Run(argv, out)
    assert run.finish() == 0, run.output()[-3000:]
    return run


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def resumed_from(out: Path) -> list[str]:
    """The checkpoint folder name each resume started from, in order."""
    events = read_jsonl(out / "events.jsonl")
    return [Path(e["message"].split()[-1]).name for e in events if e["event"] == "resume"]


def losses(out: Path, key: str = "loss") -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_jsonl(out / "metrics.jsonl") if key in r]


@pytest.fixture(scope="module")
def sft_reference(tmp_path_factory) -> list[tuple[int, float]]:
    """The losses of an uninterrupted SFT run."""
    out = tmp_path_factory.mktemp("reference") / "sft"
    completed(SFT, out)
    found = losses(out)
    assert [step for step, _ in found] == list(range(1, STEPS + 1))
    return found


def test_kill_9_while_writing_a_checkpoint_and_mid_update_then_resume(tmp_path, sft_reference):
    out = tmp_path / "sft"
    # 1. killed while checkpoint 3 is half written (its model/ is there, optimizer.pt not yet)
    first = Run(SFT, out, pause_at="checkpoint:3")
    first.wait_until_paused()
    assert (out / "checkpoints" / ".tmp-step-3" / "model").is_dir()
    first.kill()
    assert checkpoints(out) == [".tmp-step-3", "step-1", "step-2"]
    # 2. resumed, then killed in the middle of update 5 (checkpoint 4 complete)
    second = Run([*SFT, "--resume"], out, pause_at="update:5")
    second.wait_until_paused()
    second.kill()
    assert resumed_from(out) == ["step-2"]  # never the half-written step 3
    assert checkpoints(out) == ["step-3", "step-4"]
    # 3. resumed again, to the end: the same losses as the run that was never stopped
    completed([*SFT, "--resume"], out)
    assert resumed_from(out) == ["step-2", "step-4"]
    assert losses(out) == sft_reference
    assert (out / "model" / "config.json").is_file()


def test_kill_9_of_grpo_while_writing_a_checkpoint_then_resume(tmp_path):
    reference = tmp_path / "reference"
    completed(GRPO, reference)
    out = tmp_path / "grpo"
    run = Run(GRPO, out, pause_at="checkpoint:2")
    run.wait_until_paused()
    run.kill()
    assert checkpoints(out) == [".tmp-step-2", "step-1"]
    completed([*GRPO, "--resume"], out)
    assert resumed_from(out) == ["step-1"]
    for key in ("objective/scores", "loss", "objective/kl"):
        assert losses(out, key) == losses(reference, key), key
    assert len(losses(out, "objective/scores")) == 4


def test_ctrl_c_writes_a_checkpoint_and_prints_a_resume_command_that_works(tmp_path, sft_reference):
    out = tmp_path / "sft"
    run = Run(SFT, out, pause_at="update:3")
    run.wait_until_paused()
    run.proc.send_signal(signal.SIGINT)
    run.wait_for_output(FIRST_CTRL_C)
    run.marker.unlink()  # the update goes on
    assert run.finish() == 130
    output = run.output()
    assert "Traceback" not in output
    assert (
        f"alignkit: interrupted at step 3: checkpoint written to {out}/checkpoints/step-3" in output
    )
    assert checkpoints(out) == ["step-2", "step-3"]
    events = read_jsonl(out / "events.jsonl")
    assert events[-1]["event"] == "interrupted" and events[-1]["step"] == 3
    command = next(
        line.split("resume with: ", 1)[1] for line in output.splitlines() if "resume with: " in line
    )
    argv = shlex.split(command)
    assert argv[0] == "alignkit" and "--resume" in argv
    resumed = subprocess.run(
        [sys.executable, "-m", "alignkit", *argv[1:]], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert resumed_from(out) == ["step-3"]
    assert losses(out) == sft_reference


def test_a_second_ctrl_c_stops_at_once_and_says_no_checkpoint_was_written(tmp_path):
    out = tmp_path / "sft"
    run = Run(SFT, out, pause_at="update:3")
    run.wait_until_paused()
    run.proc.send_signal(signal.SIGINT)
    run.wait_for_output(FIRST_CTRL_C)
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130
    output = run.output()
    assert "Traceback" not in output
    assert (
        f"alignkit: interrupted at once: no checkpoint written now; the last complete one is "
        f"{out}/checkpoints/step-2" in output
    )
    assert "resume with: alignkit sft" in output
    assert checkpoints(out) == ["step-1", "step-2"]


def test_the_logs_of_a_killed_run_stay_readable(tmp_path):
    """A kill (or a full disk) can cut the last line of metrics.jsonl or events.jsonl short:
    reading drops it, a resume rewrites metrics.jsonl without it, and the next event starts
    a line of its own."""
    from alignkit.train.run_dir import RunDirectory

    run = RunDirectory(tmp_path, tensorboard=False)
    run.log_metrics(1, {"loss": 1.0})
    run.log_metrics(2, {"loss": 0.5})
    run.log_event("checkpoint", 2, "step-2")
    for path in (run.metrics_path, run.events_path):
        with path.open("a") as f:
            f.write('{"step": 3, "lo')  # the kill came mid-write
    assert [r["step"] for r in read_jsonl(run.metrics_path)] == [1, 2]
    resumed = RunDirectory(tmp_path, tensorboard=False)
    resumed.truncate_metrics_after(2)
    lines = run.metrics_path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    resumed.log_event("resume", 2, "resumed from step-2")
    assert [e["event"] for e in read_jsonl(run.events_path)] == ["checkpoint", "resume"]


def test_ctrl_c_in_a_grpo_iteration_checkpoints_between_iterations(
    tmp_path, capsys, interactive_sigint
):
    """In-process: the reward function of iteration 2 presses Ctrl-C (SIGINT to this
    process); the iteration finishes, a checkpoint is written, and the CLI says so."""
    from alignkit.cli import main

    reward = tmp_path / "press_ctrl_c.py"
    reward.write_text(
        "import os, signal\n"
        "calls = []\n"
        "def score(prompts, responses):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "    return [0.0] * len(responses)\n"
    )
    out = tmp_path / "grpo"
    argv = [*GRPO[: GRPO.index("--reward")], "--reward", f"{{reward_functions: [{reward}:score]}}"]
    argv += ["--max-length", "96", "--output-dir", str(out)]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert f"alignkit: interrupted at step 2: checkpoint written to {out}/checkpoints/step-2" in err
    assert "resume with: alignkit grpo" in err and "--resume" in err
    assert checkpoints(out) == ["step-1", "step-2"]
