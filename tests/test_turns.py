import multiprocessing
import os
import signal
import threading
import time

import pytest

from reform_engine.turns import queue_dir, turn, waiting

HANG_GUARD = 60.0  # seconds: only so a broken queue cannot hang the suite; never a speed requirement


class Busy(Exception):
    pass


def until(condition) -> None:
    guard = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < guard, "the queue never reached the expected state"
        time.sleep(0.001)


def held(lock, release: threading.Event) -> threading.Thread:
    """A thread that takes the turn on ``lock`` and keeps it until ``release`` is set; returned once it has it."""
    def holder():
        with turn(lock, time.monotonic() + HANG_GUARD, Busy):
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    until(lambda: waiting(lock) == 1)
    return thread


def test_waiters_get_their_turns_in_the_order_they_asked(tmp_path):
    lock, order, release = tmp_path / "db.lock", [], threading.Event()

    def waiter(name):
        with turn(lock, time.monotonic() + HANG_GUARD, Busy):
            order.append(name)

    threads = [held(lock, release)]
    for name in ("first", "second", "third", "fourth"):
        threads.append(threading.Thread(target=waiter, args=(name,)))
        threads[-1].start()
        until(lambda n=len(threads): waiting(lock) == n)  # each one queued before the next asks
    release.set()
    for t in threads:
        t.join()
    assert order == ["first", "second", "third", "fourth"]
    assert waiting(lock) == 0  # every entry removed on the way out


def _queue_and_hang(lock: str) -> None:
    with turn(__import__("pathlib").Path(lock), time.monotonic() + HANG_GUARD, Busy):
        time.sleep(HANG_GUARD)


def test_a_waiter_killed_in_the_queue_is_skipped_and_its_entry_cleared(tmp_path):
    lock, order, release = tmp_path / "db.lock", [], threading.Event()

    first = held(lock, release)
    doomed = multiprocessing.get_context("spawn").Process(target=_queue_and_hang, args=(str(lock),))
    doomed.start()
    until(lambda: waiting(lock) == 2)
    behind = threading.Thread(target=lambda: turn_and_note(lock, order))
    behind.start()
    until(lambda: waiting(lock) == 3)
    os.kill(doomed.pid, signal.SIGKILL)  # dies waiting: the kernel drops its lock, its file stays
    doomed.join()
    release.set()
    first.join()
    behind.join()
    assert order == ["behind"]
    with turn(lock, time.monotonic() + HANG_GUARD, Busy):  # the next ticket-taker clears the dead entry
        assert sorted(n for n in os.listdir(queue_dir(lock)) if n.isdigit()) == ["000000000003"]


def turn_and_note(lock, order):
    with turn(lock, time.monotonic() + HANG_GUARD, Busy):
        order.append("behind")


def test_a_waiter_past_its_deadline_raises_busy_and_leaves_the_queue(tmp_path):
    lock, release = tmp_path / "db.lock", threading.Event()

    t = held(lock, release)
    with pytest.raises(Busy):
        with turn(lock, time.monotonic(), Busy):  # a deadline already past
            pass
    assert waiting(lock) == 1  # only the holder's entry is left
    release.set()
    t.join()


def test_turns_do_not_nest_within_a_thread(tmp_path):
    with turn(tmp_path / "db.lock", time.monotonic() + HANG_GUARD, Busy):
        with pytest.raises(RuntimeError, match="must not nest"):
            with turn(tmp_path / "db.lock", time.monotonic() + HANG_GUARD, Busy):
                pass
