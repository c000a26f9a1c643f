"""Consumer names tell a dead local daemon's entries from a live one's, even after its
pid has been handed to another process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil

from selfheal.bus.consumer import is_dead_local, local_consumer_name

HOST = socket.gethostname()


def test_this_process_is_alive_under_its_own_name() -> None:
    name = local_consumer_name()
    assert name.startswith(f"{HOST}:{os.getpid()}:")
    assert not is_dead_local(name)


def test_a_pid_given_to_another_process_is_dead() -> None:
    # Our pid, but a start time that is not ours: the daemon that had it is gone.
    started = psutil.Process().create_time()
    assert is_dead_local(f"{HOST}:{os.getpid()}:{started - 5:.2f}")


def test_an_exited_process_is_dead_and_a_zombie_too() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not reaped yet, so its entry (and start time) is still there.
        name = f"{HOST}:{child.pid}:{psutil.Process(child.pid).create_time():.2f}"
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child never exited"
            time.sleep(0.01)
        assert is_dead_local(name), "exited, not yet reaped by its parent"
    finally:
        child.wait(timeout=10)
    assert is_dead_local(name), "exited and reaped"


def test_other_hosts_and_older_names_are_left_to_the_ordinary_reclaim() -> None:
    assert not is_dead_local(f"elsewhere.example:{os.getpid()}:1.00")
    assert not is_dead_local(f"{HOST}:{os.getpid()}"), "an older name of a live pid"
    assert not is_dead_local("not-a-consumer-name")
