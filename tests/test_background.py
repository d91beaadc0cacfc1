import threading

from reform_engine.background import BackgroundTask, wait_all


def test_task_reports_progress_then_its_result():
    gate = threading.Event()

    def work(report):
        report(1, 4, "one of four")
        gate.wait()
        report(3, 4)
        return "answer"

    task = BackgroundTask(work, "demo")
    while task.done != 1:  # the thread has reported its first step
        task.wait(0.01)
    assert (task.state, task.total, task.message, task.progress) == ("running", 4, "one of four", 0.25)
    gate.set()
    assert task.wait()
    assert (task.state, task.result, task.progress, task.error) == ("succeeded", "answer", 1.0, None)


def test_task_without_a_total_has_no_progress_share():
    task = BackgroundTask(lambda report: report(5), "convert")
    task.wait()
    assert task.progress == 1.0
    blocked = threading.Event()
    pending = BackgroundTask(lambda report: blocked.wait(), "block")
    assert pending.progress is None and not pending.finished
    blocked.set()
    pending.wait()


def test_a_failing_task_keeps_the_error_and_says_what_went_wrong():
    def work(report):
        raise ValueError("no such file")

    task = BackgroundTask(work, "bad")
    task.wait()
    assert task.state == "failed" and isinstance(task.error, ValueError)
    assert task.message == "ValueError: no such file"
    assert task.result is None and task.finished_at is not None


def test_wait_all_waits_for_every_running_task():
    gate = threading.Event()
    tasks = [BackgroundTask(lambda report: gate.wait(), f"t{i}") for i in range(2)]
    assert wait_all(timeout=0.01) is False
    gate.set()
    assert wait_all() is True and all(t.state == "succeeded" for t in tasks)


def test_task_says_the_time_left_in_its_counted_phase_from_the_given_clock():
    times = iter([0.0, 50.0, 60.0, 80.0, 90.0])  # start, then one reading per report, then the end
    seen = []

    def work(report):
        report(0, None, "loading")            # t=50
        report(0, 100, "scoring")             # t=60: the counted phase starts
        seen.append(task_ref[0].remaining)
        report(25, 100)                       # t=80: 25 in 20 s
        seen.append(task_ref[0].remaining)
        return "ok"

    gate = threading.Event()
    task_ref = []

    def gated(report):
        gate.wait()
        return work(report)

    task = BackgroundTask(gated, "eta", clock=lambda: next(times))
    task_ref.append(task)
    gate.set()
    assert task.wait()
    assert seen == [None, 60.0]
    assert (task.remaining, task.elapsed) == (None, 90.0)
