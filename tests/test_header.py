"""boss_fast._header: the one header every file format starts from, and the files earlier versions wrote.

tests/data/pre_header/ holds one small file of each format, written by the code BEFORE the common header and
the identity module existed (commit 42eea9c; tests/data/make_pre_header_files.py says how). Each must still
load with the current code: users have such files on disk (searches to resume, schedules to sample with).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save

import boss_fast as bf
from boss_fast._checkpoint import CHECKSUM_KEY
from boss_fast._header import check_header, header_strings, make_header, write_file
from boss_fast.demo import cached_reference
from boss_fast.engine import Checkpoint
from boss_fast.models import (
    MLPVelocity,
    WeightsFileError,
    load_bundled,
    read_weights,
    save_weights,
    weights_path,
)

OLD = Path(__file__).resolve().parent / "data" / "pre_header"
EXPECTED = json.loads((OLD / "expected.json").read_text())
RUN = {"noise": "sha256:0011223344556677", "sample_shape": "(2,)", "dtype": "torch.float64", "model": "key:x"}


def _old_files(tmp_path: Path) -> Path:
    """A writable copy: resuming rewrites checkpoints; the fixtures stay as the old code wrote them."""
    return Path(shutil.copytree(OLD, tmp_path / "pre_header"))


# ----------------------------------------------------------------------------------------- the one check


def test_a_file_of_another_format_version_or_run_is_refused_by_name():
    expected = make_header("boss_fast.thing", 2, noise="sha256:aa", shape=(2,))
    good = {"format": "boss_fast.thing", "version": 2, "noise": "sha256:aa", "shape": (2,), "extra": 1}
    check_header(good, expected, "f.bin", "thing")  # extra fields are the format's own business
    cases = [
        ([], "f.bin: expected a JSON object, got list"),
        ({**good, "format": "other"}, "f.bin: not a boss_fast thing \\(format 'other', expected"),
        ({k: v for k, v in good.items() if k != "format"}, "not a boss_fast thing \\(format None"),
        ({**good, "version": 1}, "f.bin: unsupported thing version 1 \\(this reader knows 2\\)"),
        ({**good, "version": True}, "unsupported thing version True"),
        ({**good, "version": "2"}, "unsupported thing version '2'"),  # a JSON format's version is an int
        ({k: v for k, v in good.items() if k != "noise"}, "thing f.bin lacks 'noise'"),
        ({**good, "noise": "sha256:bb"}, "different run: noise = 'sha256:bb' there, 'sha256:aa' here"),
    ]
    for stored, match in cases:
        with pytest.raises(ValueError, match=match):
            check_header(stored, expected, "f.bin", "thing")


def test_versions_a_reader_still_knows_and_string_headers():
    check_header({"format": "f", "version": 1}, make_header("f", 3), "p", "f", oldest=1)
    with pytest.raises(ValueError, match="knows 1..3"):
        check_header({"format": "f", "version": 4}, make_header("f", 3), "p", "f", oldest=1)
    # safetensors metadata holds strings: the version is a decimal string there
    strings = header_strings(make_header("f", "2", start=0, shape=(4, 2)))
    assert strings == {"format": "f", "version": "2", "start": "0", "shape": "(4, 2)"}
    check_header(dict(strings), strings, "p", "f")
    with pytest.raises(ValueError, match="unsupported f version '1'"):
        check_header({**strings, "version": "1"}, strings, "p", "f")


def test_a_format_explains_a_difference_its_own_way():
    expected = make_header("f", 1, model="abc")
    with pytest.raises(ValueError, match="^written for model 'xyz'$"):
        check_header({"format": "f", "version": 1, "model": "xyz"}, expected, "p", "f",
                     explain=lambda key: f"written for model {'xyz'!r}")  # fmt: skip


def test_write_file_is_atomic_and_makes_the_folder(tmp_path):
    path = tmp_path / "new" / "f.bin"
    write_file(path, lambda f: f.write(b"one"))
    with pytest.raises(RuntimeError, match="interrupted"):
        write_file(path, lambda f: (f.write(b"half"), (_ for _ in ()).throw(RuntimeError("interrupted"))))
    assert path.read_bytes() == b"one" and [p.name for p in path.parent.iterdir()] == ["f.bin"]


# ------------------------------------------------------------------------- files the old code wrote


def test_old_schedule_files_load_and_are_rewritten_byte_for_byte(tmp_path):
    for name, cls in (("schedule.json", bf.Schedule), ("schedule_set.json", bf.ScheduleSet)):
        loaded = cls.load(OLD / name)
        loaded.save(tmp_path / name)
        assert (tmp_path / name).read_bytes() == (OLD / name).read_bytes(), name


@pytest.mark.parametrize(
    ("name", "fmt", "version"),
    [("cost.npz", "boss_fast.cost_checkpoint", 2), ("own_state.npz", "boss_fast.own_state_checkpoint", 1)],
)
def test_old_search_checkpoints_resume_and_refuse_another_run(tmp_path, name, fmt, version):
    path = _old_files(tmp_path) / name
    ckpt = Checkpoint.open(path, fmt, version, RUN, name)
    stored = ckpt.load()
    assert stored["sums"].tolist() == [0.0, 1.0, 2.0] and int(stored["count"]) == 7
    assert CHECKSUM_KEY not in stored  # written before the checksum: read as it was
    ckpt.save(sums=stored["sums"], count=stored["count"])  # a resumed run rewrites it with one
    assert ckpt.load()[CHECKSUM_KEY].item().startswith("sha256:")
    with pytest.raises(ValueError, match="different run: noise = 'sha256:0011223344556677' there"):
        Checkpoint.open(path, fmt, version, {**RUN, "noise": "sha256:ff"}, name).load()
    with pytest.raises(ValueError, match=f"not a boss_fast {name} \\(format '{fmt}'"):
        Checkpoint.open(path, "boss_fast.other", version, RUN, name).load()
    with pytest.raises(ValueError, match=f"unsupported {name} version {version}"):
        Checkpoint.open(path, fmt, version + 1, RUN, name).load()


def teacher() -> MLPVelocity:
    """The module tests/data/make_pre_header_files.py built (same class, same formula for every weight)."""
    net = MLPVelocity(hidden=8, depth=1, n_freqs=2).double()
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.cos(torch.arange(p.numel(), dtype=torch.float64) * 0.7 + i).reshape(p.shape) / 3)
    return net


def test_an_old_straightening_run_resumes_from_its_checkpoint_and_pair_cache(tmp_path):
    old = _old_files(tmp_path)
    sched = bf.Schedule.load(old / "schedule.json")
    assert sched.fingerprint == bf.model_fingerprint(teacher())  # the same teacher as the old run's
    noise = bf.seeded_noise((2,), 0, 8, seed=3, dtype=torch.float64)
    calls = []
    frozen = teacher()
    frozen.register_forward_pre_hook(lambda module, args: calls.append(1))  # hooks are not fingerprinted
    common = dict(
        num_pairs=8, grid=sched.grid, iters=4, batch_size=4, warmup=1, checkpoint_every=2, pair_batch_size=4
    )
    # today's default pairs and inputs: both hints
    with pytest.raises(ValueError, match=r"pass pair_steps=None, pair_solver=None.*pass inputs='teacher'"):
        bf.straighten(
            teacher(), sched, frozen, bf.StraightenSettings(**common), checkpoint_dir=old / "straighten",
            device="cpu", progress=False, noise=noise, cache_dir=old / "pairs",
        )  # fmt: skip
    assert not calls  # refused before the pilot or the teacher ran
    # The old run's pairs (the schedule's own teacher) and inputs (the teacher's): the old defaults.
    settings = bf.StraightenSettings(**common, pair_steps=None, pair_solver=None, inputs="teacher")
    student = bf.straighten(
        teacher(), sched, frozen, settings, checkpoint_dir=old / "straighten", device="cpu", progress=False,
        noise=noise, cache_dir=old / "pairs",
    )  # fmt: skip
    assert not calls  # every pair came from the old shards (their folder name is the unchanged cache key)
    for key, value in student.state_dict().items():  # resumed at step 4 of 4: the old run's student
        assert value.tolist() == EXPECTED["student"][key], key


def test_the_old_reference_cache_is_reused(tmp_path):
    old = _old_files(tmp_path)
    noise = bf.seeded_noise((2,), 0, 8, seed=3, dtype=torch.float64)
    ref, reused = cached_reference(
        load_bundled("gmm2d"), noise, old / "reference.safetensors", fingerprint="gmm2d"
    )
    assert reused and ref.tolist() == EXPECTED["reference"]
    _, reused = cached_reference(load_bundled("gmm2d"), noise, old / "reference.safetensors", fingerprint="x")
    assert not reused  # another model: recomputed (a cache, not a refusal)


def test_weight_files_carry_the_header_and_old_ones_still_load(tmp_path):
    net = MLPVelocity(hidden=4, depth=1, n_freqs=1)
    path = save_weights(net, tmp_path / "w.safetensors", name="mlp2d", config=net.config())
    _, _, meta = read_weights(path, name="mlp2d", script="scripts/train_mlp2d.py")
    assert (meta["format"], meta["version"]) == ("boss_fast.weights", "1")
    other = tmp_path / "other.safetensors"
    other.write_bytes(save(net.state_dict(), metadata={**meta, "format": "boss_fast.schedule"}))
    with pytest.raises(WeightsFileError, match="not a boss_fast weights file \\(format 'boss_fast.schedule'"):
        read_weights(other, name="mlp2d", script="scripts/train_mlp2d.py")
    # The shipped files predate the header (no format key): read by their model name, as before.
    assert "format" not in read_weights(weights_path("mlp2d"), name="mlp2d", script="s")[2]


def test_fixtures_are_tiny():
    sizes = {p.name: p.stat().st_size for p in OLD.rglob("*") if p.is_file()}
    assert sum(sizes.values()) < 40_000, sizes
    assert np.all([size > 0 for size in sizes.values()])
