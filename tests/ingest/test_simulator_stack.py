"""Child processes of the local stack (embedded broker, services) never outlive the process that started them.

A runner killed with SIGKILL (a CI time limit, a second Ctrl-C, the OOM killer) gets no chance to stop its
children; the kernel stops them instead (``die_with_parent``). Linux only, like the mechanism.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from chargeghar_ingest.simulator.stack import die_with_parent, free_port, port_open

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux"
)

WAIT_S = 15.0


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie nobody reaped yet (containers often have no reaping init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + WAIT_S  # hang guard only
    while time.monotonic() < deadline:
        if process_gone(pid):
            return True
        time.sleep(0.05)
    return False


def start_parent(script: str) -> tuple[subprocess.Popen[str], int]:
    """Run ``script`` in a new interpreter; it prints the pid of the child it started, then sleeps."""
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line.strip().isdigit(), f"parent printed {line!r}"
    return parent, int(line)


def kill_hard(parent: subprocess.Popen[str]) -> None:
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)


def test_a_wrapped_command_dies_when_its_parent_is_killed() -> None:
    parent, child = start_parent(
        """
        import subprocess, sys, time
        from chargeghar_ingest.simulator.stack import die_with_parent
        child = subprocess.Popen(die_with_parent(["sleep", "600"]))
        print(child.pid, flush=True)
        time.sleep(600)
        """
    )
    try:
        # The wrapper exec()s the command: same pid, the real program.
        deadline = time.monotonic() + WAIT_S
        while Path(f"/proc/{child}/comm").read_text().strip() != "sleep":
            assert time.monotonic() < deadline, "the wrapper never became the command"
            time.sleep(0.02)
        kill_hard(parent)
        assert wait_gone(child), "the child outlived its SIGKILLed parent"
    finally:
        if not process_gone(child):
            os.kill(child, signal.SIGKILL)


def test_the_embedded_broker_of_a_killed_runner_does_not_stay_behind() -> None:
    port = free_port()
    parent, broker = start_parent(
        f"""
        import time
        from chargeghar_ingest.simulator.stack import embedded_broker_process, wait_for_port
        broker = embedded_broker_process({port}).start()
        wait_for_port("127.0.0.1", {port}, 20, broker)
        print(broker.pid, flush=True)
        time.sleep(600)
        """
    )
    try:
        assert port_open("127.0.0.1", port)
        kill_hard(parent)
        assert wait_gone(broker), "the embedded broker outlived the SIGKILLed runner"
        assert not port_open("127.0.0.1", port)
    finally:
        if not process_gone(broker):
            os.kill(broker, signal.SIGKILL)


def test_a_command_is_not_started_when_its_parent_is_already_gone() -> None:
    # The window between fork and prctl: the wrapper checks that the parent it was given is still its parent.
    result = subprocess.run(
        [*die_with_parent(["true"])[:-2], "1", "true"],  # claims pid 1 started it: not our parent
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0 and "parent exited" in result.stderr
