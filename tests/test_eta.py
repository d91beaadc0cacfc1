from reform_engine.eta import ProgressClock, format_remaining, progress_text, remaining_seconds


def test_remaining_time_is_the_work_left_at_the_rate_so_far():
    assert remaining_seconds(10, 40, 20.0) == 60.0
    assert remaining_seconds(30, 40, 20.0, done_at_start=10) == 10.0
    assert remaining_seconds(0, 40, 20.0) is None  # no rate yet
    assert remaining_seconds(40, 40, 20.0) == 0.0


def test_the_time_left_reads_in_seconds_minutes_or_hours():
    assert [format_remaining(s) for s in (None, 0.2, 42.4, 150, 3900)] == [
        "", "about 1 s left", "about 42 s left", "about 2 min left", "about 1 h 5 min left"]


def test_a_clock_times_each_phase_from_its_own_start():
    times = iter([100.0, 130.0, 160.0, 200.0, 210.0])
    clock = ProgressClock(clock=lambda: next(times))
    assert clock.observe(0, None) is None          # t=100: loading, no count
    assert clock.observe(0, 40) is None            # t=130: scoring starts, no rate yet
    assert clock.observe(10, 40) == 90.0           # t=160: 10 in 30 s, 30 left
    assert clock.observe(0, 8) is None             # t=200: a new phase (another total)
    assert clock.observe(2, 8) == 30.0             # t=210: 2 in 10 s, 6 left; the scoring's time is not counted


def test_a_clock_first_seen_part_way_times_from_the_given_start():
    clock = ProgressClock(clock=lambda: 0.0, started=1000.0)
    assert clock.observe(5, 20, now=1050.0) == 150.0


def test_a_count_that_goes_back_starts_a_new_phase():
    clock = ProgressClock()
    clock.observe(0, 10, now=0.0)
    clock.observe(5, 10, now=10.0)
    assert clock.observe(1, 10, now=20.0) is None
    assert clock.observe(3, 10, now=24.0) == 14.0


def test_the_progress_text_never_repeats_the_count():
    assert progress_text("step 5/21 loss 0.412", 5, 21, 120.0) == "step 5/21 loss 0.412 · about 2 min left"
    assert progress_text("scoring", 5, 21, None) == "scoring · 5/21"
    assert progress_text("", None, None, None) == ""
