"""The command line, at small sizes (the demo: tests/test_demo.py)."""

import numpy as np
import pytest

from boss_fast import Schedule
from boss_fast.cli import main


def test_dp_example_prints_every_budget(capsys):
    assert main(["dp-example", "--grid", "50", "--max-steps", "6"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6
    assert lines[0].split()[0] == "1" and lines[-1].split()[0] == "6"


def test_schedule_then_sample_bundled(tmp_path, capsys):
    out = tmp_path / "k3.json"
    argv = ["schedule", "--model", "gmm2d", "--steps", "3", "--grid", "20", "--num-samples", "16"]
    assert main([*argv, "--no-progress", "--out", str(out)]) == 0
    sched = Schedule.load(out)
    assert sched.steps == 3 and sched.times[0] == 0.0 and sched.times[-1] == 1.0
    samples = tmp_path / "x.npy"
    assert (
        main(["sample", "--model", "gmm2d", "--schedule", str(out), "--num", "5", "--out", str(samples)]) == 0
    )
    assert np.load(samples).shape == (5, 2)


def test_schedule_importable_model(tmp_path, monkeypatch):
    (tmp_path / "my_flow.py").write_text(
        "import torch\ndef velocity(x, t):\n    return -x * t.reshape(-1, *([1] * (x.ndim - 1)))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "s.json"
    argv = ["schedule", "--model", "my_flow:velocity", "--shape", "3,4", "--steps", "2", "--grid", "10"]
    assert main([*argv, "--num-samples", "4", "--no-progress", "--out", str(out)]) == 0
    assert Schedule.load(out).steps == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "nope"], "unknown model"),
        (["--model", "json:dumps_nothing"], "cannot load"),
        (["--model", "json:dumps"], "--shape is required"),
        (["--model", "json:dumps", "--shape", "3,x"], "comma-separated"),
    ],
)
def test_schedule_bad_model(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["schedule", *argv, "--steps", "2", "--out", str(tmp_path / "s.json")])


def test_schedule_bad_steps_is_a_clear_error(tmp_path, capsys):
    argv = ["schedule", "--model", "gmm2d", "--steps", "30", "--grid", "20", "--num-samples", "4"]
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "s.json")]) == 2
    assert "steps" in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()


def test_sample_refuses_corrupt_schedule(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "boss_fast.schedule", "version": 1, "times": [0.0')
    assert main(["sample", "--model", "gmm2d", "--schedule", str(bad), "--out", str(tmp_path / "x.npy")]) == 2
    assert "bad.json" in capsys.readouterr().err
