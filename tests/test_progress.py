"""Progress in logs: plain lines, not bar redraws, when stderr is no terminal."""

import pathseg.progress as progress


def test_logs_get_a_line_a_minute_and_one_at_the_end(monkeypatch, capsys):
    clock = iter(float(t) for t in range(0, 10_000, 25))  # each call 25 s after the last
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with progress.Bar("training") as bar:  # pytest's stderr is no terminal
        for i in range(1, 11):
            bar(i, 100, f"loss {1 / i:.2f}")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "training: 4/100 (4%) loss 0.25, 25 s/it, ~40 min left"  # 75 s after the first call
    assert [line.split()[1] for line in lines] == ["4/100", "7/100", "10/100"]  # >= 60 s apart, and the end
    assert "\r" not in "".join(lines)


def test_short_work_leaves_no_lines(capsys):
    with progress.Bar("quick") as bar:
        for i in range(1, 4):
            bar(i, 3)
    assert list(progress.track(range(3), total=3, desc="scoring")) == [0, 1, 2]
    assert capsys.readouterr().err == ""
