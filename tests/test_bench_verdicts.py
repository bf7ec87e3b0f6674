"""`make bench` verdicts come from the whole interval of per-round ratios, and equal work that seems to beat
its bound is flagged, never "met" (issue 17)."""

import json

import pytest

from bench.common import Entry


@pytest.mark.parametrize(
    ("rounds", "better", "bound", "verdict"),
    [
        ([0.99, 1.01, 1.03], "lower", 1.0, "not shown"),  # straddles the goal 1.02
        ([0.98, 1.00, 1.01], "lower", 1.0, "met"),  # every round at or below the goal, noise below 1
        ([1.03, 1.05, 1.08], "lower", 1.0, "not met"),
        ([0.70, 0.76, 0.80], "lower", 1.0, "impossible"),  # the framework "25% faster" than the same loop
        ([1.20, 1.29, 1.31], "higher", 1.0, "impossible"),  # a speed-up above its ideal
        ([0.95, 0.99, 1.01], "higher", 1.0, "met"),  # a share of the ideal within the noise of 1
    ],
)
def test_verdict_over_the_interval(rounds, better, bound, verdict):
    goal = 1.02 if better == "lower" else 0.9
    entry = Entry("x", sorted(rounds)[1], goal, better, rounds=rounds, bound=bound)
    assert entry.verdict == verdict
    assert entry.met == (verdict == "met")
    assert entry.as_dict()["interval"] == [min(rounds), max(rounds)]


def test_close_goals_and_single_measurements():
    assert Entry("x", 1.03, 1.0, "close", tolerance=0.05, rounds=[1.01, 1.04]).verdict == "met"
    assert Entry("x", 1.03, 1.0, "close", tolerance=0.05, rounds=[1.01, 1.07]).verdict == "not shown"
    assert Entry("x", 1.0, 1.0, "higher").verdict == "met" and Entry("x", 1.0, 1.0, "higher").interval == (
        1.0,
        1.0,
    )


def test_rounds_make_disjoint_intervals_from_noise_rare():
    import doctest

    import bench.rounds
    from bench.rounds import ROUNDS, disjoint_chance

    assert doctest.testmod(bench.rounds).failed == 0
    assert disjoint_chance(3) == pytest.approx(0.1) and disjoint_chance(ROUNDS) < 0.01


def test_compare_runs_names_the_measures_apart(tmp_path, capsys):
    from bench.compare_runs import main

    def run(interval):
        entry = {"name": "m", "interval": interval, "verdict": "met", "rounds": 5}
        return {"date": "d", "machine": {"cpu": "c"}, "entries": [entry]}

    paths = [tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"]
    for path, interval in zip(paths, ([0.8, 0.9], [0.85, 1.0], [0.95, 1.0]), strict=True):
        path.write_text(json.dumps(run(interval)))
    assert main([str(paths[0]), str(paths[1])]) == 0
    assert main([str(paths[0]), str(paths[2])]) == 1
    assert "APART" in capsys.readouterr().out
    assert main(["--markdown", str(paths[0]), str(paths[2])]) == 1
    assert "| m | 0.800 .. 0.900 | 0.950 .. 1.000 | **apart**: met, met |" in capsys.readouterr().out
