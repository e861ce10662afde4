"""`send_deadline`: a send blocked past its deadline is cut off; sends that finish in time are left alone."""

from __future__ import annotations

import socket
import time

import pytest
from qwenguard.core.backends.send_watchdog import send_deadline


def test_a_send_to_a_peer_that_never_reads_is_cut_off_at_the_deadline():
    a, b = socket.socketpair()
    try:
        start = time.monotonic()
        with pytest.raises(OSError):
            with send_deadline(a, time.monotonic() + 0.3):
                while True:
                    a.sendall(b"x" * 65536)  # b never reads: the buffers fill and sendall blocks
        assert time.monotonic() - start < 3
    finally:
        a.close()
        b.close()


SEND_S = 1.0  # a send's deadline: far past a one-byte send to a reading peer, even on a loaded machine (at 50 ms,
# a thread preempted inside the block for longer was cut, as the deadline says it must be)


def test_sends_in_time_are_not_cut_and_leave_nothing_armed():
    a, b = socket.socketpair()
    try:
        for _ in range(1000):
            with send_deadline(a, time.monotonic() + SEND_S):
                a.sendall(b"y")
            b.recv(1)
        time.sleep(SEND_S + 0.1)  # past every deadline armed above: none may fire
        a.sendall(b"z")
        assert b.recv(1) == b"z"
    finally:
        a.close()
        b.close()


def test_no_deadline_means_no_watchdog():
    a, b = socket.socketpair()
    try:
        with send_deadline(a, None):
            a.sendall(b"ok")
        assert b.recv(2) == b"ok"
    finally:
        a.close()
        b.close()
