"""Nothing silently wrong (library side): the sampler checks every step's output and the result, one guidance
check everywhere, schedule-set files refuse what can be refused (and the one edit that cannot be, as
documented), diffusers_sigmas refuses extreme shifts and foreign configs, and the unnamed errors name the
argument. The command-line side is tests/test_cli_refusals.py."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

import boss_fast as bf
from boss_fast._identity import content_digest
from boss_fast.integrations.sigmas import diffusers_sigmas
from boss_fast.kernels import euler_step
from boss_fast.sampler import TeacherRecorder
from boss_fast.schedule import interpolate_schedule

COMPILE_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"  # inductor's import
TIMES = [0.0, 0.2, 0.5, 0.8, 1.0]  # step 2 starts at t = 0.5


class LaterStep(nn.Module):
    """-x on its first call (the sampler's one-row build check), then ``bad(x)``: a model that breaks only
    after the start, as the issue's did. A Python counter, not t: dynamo traces it (no data-dependent branch),
    so under torch.compile the bad output is what the traced loop sees."""

    def __init__(self, bad) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return -x if self.calls == 1 else self.bad(x)


BAD_OUTPUTS = {
    "broadcastable (B, 1)": (lambda x: -x[:, :1], ValueError, "velocity returned shape (4, 1)"),
    "wrong batch": (lambda x: -x[:1], ValueError, "velocity returned shape (1, 3)"),
    "float64": (lambda x: (-x).double(), ValueError, "dtype torch.float64"),
    "float16": (lambda x: (-x).half(), ValueError, "dtype torch.float16"),
    "int64": (lambda x: (-x).long(), ValueError, "dtype torch.int64"),
    "None": (lambda x: None, TypeError, "velocity returned NoneType"),
    "ndarray": (lambda x: (-x).numpy(), TypeError, "velocity returned ndarray"),
    "meta tensor": (lambda x: torch.empty_like(x, device="meta"), ValueError, "a tensor on meta"),
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
def test_the_eager_sampler_checks_every_steps_output(case):
    bad, error, fragment = BAD_OUTPUTS[case]
    sampler = bf.Sampler(LaterStep(bad), TIMES, mode="eager")
    # Call 1 is the build check; the loop's step 0 is call 2: the error names step 0 and its time.
    with pytest.raises(error, match=re.escape(fragment) + r".* at t = 0\.0 \(step 0\)"):
        sampler(torch.randn(4, 3))


@pytest.mark.filterwarnings(COMPILE_WARNING)
@pytest.mark.parametrize("case", ["broadcastable (B, 1)", "float64", "None"])
def test_the_compiled_sampler_checks_when_it_traces(case):
    """Under torch.compile shapes and dtypes are static: the check runs once, while dynamo traces the loop,
    and holds for every replay of that graph (a retrace checks again). A failing check surfaces with its
    own message (step, time, what), not dynamo's."""
    bad, error, fragment = BAD_OUTPUTS[case]
    sampler = bf.Sampler(LaterStep(bad), TIMES, mode="compile")
    with pytest.raises(error, match=re.escape(fragment) + r".*\(step 0\)"):
        sampler(torch.randn(4, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuda_graph needs a CUDA device")
@pytest.mark.parametrize("case", ["broadcastable (B, 1)", "float64"])
def test_the_cuda_graph_sampler_checks_when_it_captures(case):
    """A captured graph replays the same kernels on the same buffers: the shapes and dtypes checked in the
    warm-up runs and the capture (Python runs then) are the ones every replay produces."""
    bad, error, fragment = BAD_OUTPUTS[case]
    sampler = bf.Sampler(LaterStep(bad), TIMES, mode="cuda_graph", device="cuda")
    with pytest.raises(error, match=re.escape(fragment) + r".*\(step 0\)"):
        sampler(torch.randn(4, 3, device="cuda"))


def test_a_later_step_and_the_stages_are_named():
    def narrows(x, t):  # right at t < 0.3, (B, 1) after: the silently broadcast model
        return -x if float(t[0]) < 0.3 else -x[:, :1]

    with pytest.raises(ValueError, match=r"shape \(4, 1\) at t = 0\.5 \(step 2\)"):
        bf.Sampler(narrows, TIMES, mode="eager")(torch.randn(4, 3))
    # Heun's second stage of step 1 runs at t1 = 0.5: the stage is checked too, under step 1.
    with pytest.raises(ValueError, match=r"shape \(4, 1\) at t = 0\.5 \(step 1\)"):
        TeacherRecorder(narrows, TIMES, mode="eager", solver="heun")(torch.randn(4, 3))
    # With guidance the doubled batch is what the model must return.
    with pytest.raises(ValueError, match=r"shape \(8, 1\) at t = 0\.5 \(step 2\).*\(8, 3\)"):
        bf.Sampler(narrows, TIMES, mode="eager", guidance=2.0)(torch.randn(4, 3))


def nan_after_the_first_step(x, t):
    return torch.where(t[:, None] > 0.3, torch.full_like(x, math.nan), -x)


@pytest.mark.filterwarnings(COMPILE_WARNING)
@pytest.mark.parametrize("mode", ["eager", "compile"])
def test_a_non_finite_result_is_refused_with_its_step(mode):
    sampler = bf.Sampler(nan_after_the_first_step, TIMES, mode=mode)
    with pytest.raises(ValueError, match=r"non-finite values in step 2, from t = 0\.5 to t = 0\.8"):
        sampler(torch.randn(4, 3))
    # The documented way out for a hot path that checks elsewhere.
    unchecked = bf.Sampler(nan_after_the_first_step, TIMES, mode=mode, check_finite=False)
    assert torch.isnan(unchecked(torch.randn(4, 3))).all()
    # A good model passes, and the check costs no correctness: the same bits as bf.sample in eager.
    noise = torch.randn(4, 3)
    good = bf.Sampler(lambda x, t: -x * t[:, None], TIMES, mode="eager")(noise)
    assert torch.equal(good, bf.sample(lambda x, t: -x * t[:, None], noise, TIMES))


def test_a_recording_teacher_names_the_grid_time():
    recorder = TeacherRecorder(nan_after_the_first_step, TIMES, mode="eager", record="all")
    with pytest.raises(ValueError, match=r"non-finite values at t = 0\.5 \(grid index 2\)"):
        recorder(torch.randn(4, 3))
    unchecked = TeacherRecorder(nan_after_the_first_step, TIMES, mode="eager", check_finite=False)
    assert torch.isnan(unchecked(torch.randn(4, 3)).states[-1]).all()
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        bf.Sampler(nan_after_the_first_step, TIMES, check_finite=1)
    with pytest.raises(TypeError, match="check_finite must be True or False"):
        TeacherRecorder(nan_after_the_first_step, TIMES, check_finite=1)


# ---------------------------------------------------------------------------------------- guidance scale

BAD_SCALES = {
    "per-feature tensor": (torch.tensor([2.0, 3.0]), TypeError, "got a tensor of shape \\(2,\\)"),
    "0-d tensor": (torch.tensor(2.0), TypeError, "got a tensor of shape \\(\\)"),
    "bool": (True, TypeError, "must be a real number, got True"),
    "string": ("2", TypeError, "must be a real number"),
    "NaN": (math.nan, ValueError, "must be finite"),
    "inf": (math.inf, ValueError, "must be finite"),
}


def _diffusers_velocity(w):
    diffusers = pytest.importorskip("diffusers")
    del diffusers
    from boss_fast.integrations.diffusers import DiffusersVelocity

    return DiffusersVelocity(nn.Linear(2, 2), negative={}, guidance_scale=w)


SCALE_TAKERS = {
    "cfg_combine": lambda w: bf.ode.cfg_combine(torch.zeros(2), torch.ones(2), w),
    "guided_velocity": lambda w: bf.guided_velocity(lambda x, t: x, lambda x, t: -x, w),
    "Sampler(guidance=)": lambda w: bf.Sampler(lambda x, t: x, [0.0, 1.0], guidance=w),
    "euler_step(guidance=)": lambda w: euler_step(torch.zeros(1, 2), torch.zeros(2, 2), 0.5, guidance=w),
    "DiffusersVelocity(guidance_scale=)": _diffusers_velocity,
}


@pytest.mark.parametrize("taker", sorted(SCALE_TAKERS))
@pytest.mark.parametrize("case", sorted(BAD_SCALES))
def test_every_guidance_scale_is_checked_the_same_way(taker, case):
    value, error, fragment = BAD_SCALES[case]
    with pytest.raises(error, match=fragment):
        SCALE_TAKERS[taker](value)


def test_cfg_combine_still_takes_numbers():
    assert torch.equal(
        bf.ode.cfg_combine(torch.zeros(2), torch.ones(2), np.float32(2.5)), torch.full((2,), 2.5)
    )
    assert torch.equal(bf.ode.cfg_combine(torch.zeros(2), torch.ones(2), 3), torch.full((2,), 3.0))


# ---------------------------------------------------------------------------------------- schedule sets


def _local_set(max_steps=5, n=21):
    grid = np.linspace(0.0, 1.0, n)
    i = np.arange(n, dtype=np.float64)
    weight = 1.0 + 0.3 * np.sin(i)  # uneven, so the DP's answers are unique
    cost = np.triu(np.square(np.subtract.outer(i, i)) * np.add.outer(weight, weight), 1)
    return bf.schedules_from_cost(cost, max_steps, grid=grid)


def _rehashed(doc):
    doc["sha256"] = content_digest(doc)
    return doc


def test_a_set_file_refuses_negative_and_budget_changing_table_edits():
    sset = _local_set()
    n = len(sset.grid)
    doc = sset.to_dict()
    upper = list(doc["cost_table_upper"])
    # A negative cost (an error is >= 0), re-hashed: refused by name (loaded before).
    edited = dict(doc, cost_table_upper=[*upper[:5], -1.0, *upper[6:]])
    with pytest.raises(ValueError, match=r"cost_table\[0, 6\] = -1\.0 is negative"):
        bf.ScheduleSet.from_dict(_rehashed(edited), "neg.json")
    # An entry on budget 2's path, raised and re-hashed: the DP check refuses it.
    path = sset[2].indices
    k = int(np.flatnonzero((np.triu_indices(n, 1)[0] == path[0]) & (np.triu_indices(n, 1)[1] == path[1]))[0])
    raised = dict(doc, cost_table_upper=[*upper[:k], upper[k] * 1000, *upper[k + 1 :]])
    with pytest.raises(ValueError, match="budget 2 is not the Bellman DP's answer"):
        bf.ScheduleSet.from_dict(_rehashed(raised), "edited.json")


def test_the_documented_limit_an_edit_that_keeps_every_saved_budget_optimal_loads():
    """What the checks cannot see (ScheduleSet's docstring; docs/api.md, "Errors and what each file is checked
    for"): raising an entry that only a larger budget uses keeps budgets 1..5 optimal at the same cost, so the
    re-hashed file loads and resample(6) answers on the edited table. This pins the docs to the code."""
    sset = _local_set()
    n = len(sset.grid)
    six = sset.resample(6).indices
    used = {
        (int(a), int(b)) for s in sset.values() for a, b in zip(s.indices[:-1], s.indices[1:], strict=True)
    }
    edge = next(
        (int(a), int(b)) for a, b in zip(six[:-1], six[1:], strict=True) if (int(a), int(b)) not in used
    )
    rows, cols = np.triu_indices(n, 1)
    k = int(np.flatnonzero((rows == edge[0]) & (cols == edge[1]))[0])
    doc = sset.to_dict()
    upper = list(doc["cost_table_upper"])
    doc["cost_table_upper"] = [*upper[:k], upper[k] * 1000, *upper[k + 1 :]]
    loaded = bf.ScheduleSet.from_dict(_rehashed(doc), "edited.json")
    assert list(loaded.values()) == list(sset.values())
    assert loaded.resample(6).indices.tolist() != six.tolist()


def test_a_set_file_with_an_out_of_range_number_names_the_file_and_field(tmp_path):
    path = tmp_path / "s.json"
    _local_set().save(path)
    doc = json.loads(path.read_text())
    text = json.dumps(doc).replace(json.dumps(doc["grid"][1]), "1e999", 1)
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{path}: grid\[1\] = 1e999 is beyond float64's range"):
        bf.ScheduleSet.load(path)


# ---------------------------------------------------------------------------------------- diffusers sigmas

SIGMA_TIMES = np.linspace(0.0, 1.0, 21)
EXTREME = {
    "shift 1e308": ({"shift": 1e308}, "sigmas\\[0\\] = inf"),
    "shift 1e-320": ({"shift": 1e-320}, "round to the same 1.0"),
    "linear mu 1e-320": ({"mu": 1e-320, "time_shift_type": "linear"}, "round to the same 1.0"),
    "mu 709": ({"mu": 709.0}, "cannot step at this schedule"),
    "mu 710": ({"mu": 710.0}, "e\\^mu overflows float64"),
    "mu 1e308": ({"mu": 1e308}, "e\\^mu overflows float64"),
    "linear mu 1e308": ({"mu": 1e308, "time_shift_type": "linear"}, "cannot step at this schedule"),
    "mu -800": ({"mu": -800.0}, "e\\^mu underflows to 0"),
    "shift 1e-6": ({"shift": 1e-6}, "float32 arithmetic it would step at"),
}


@pytest.mark.parametrize("case", sorted(EXTREME))
def test_diffusers_sigmas_refuses_shifts_float_cannot_invert(case):
    kwargs, fragment = EXTREME[case]
    with pytest.raises(ValueError, match=fragment):
        diffusers_sigmas(SIGMA_TIMES, **kwargs)


def test_diffusers_sigmas_keeps_sane_shifts_and_checks_the_config():
    for kwargs in (
        {"shift": 3.0},
        {"shift": 1e6},
        {"mu": 0.8},
        {"mu": 30.0},
        {"mu": 0.8, "time_shift_type": "linear"},
    ):
        sigmas = np.array(diffusers_sigmas(SIGMA_TIMES, **kwargs))
        assert np.all(np.diff(sigmas) < 0) and sigmas[0] == 1.0 and sigmas[-1] > 0
    flow = {"_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": "0.42.1", "shift": 3.0}
    assert diffusers_sigmas(SIGMA_TIMES, config=flow) == diffusers_sigmas(SIGMA_TIMES, shift=3.0)
    with pytest.raises(ValueError, match="_class_name is 'EulerDiscreteScheduler'"):
        diffusers_sigmas(SIGMA_TIMES, config={"_class_name": "EulerDiscreteScheduler"})
    with pytest.raises(ValueError, match="key\\(s\\) 'beta_schedule'"):
        diffusers_sigmas(SIGMA_TIMES, config={"beta_schedule": "scaled_linear", "shift": 3.0})
    with pytest.raises(TypeError, match="config's shift must be a real number, got None"):
        diffusers_sigmas(SIGMA_TIMES, config={"shift": None})


# ---------------------------------------------------------------------------------------- unnamed errors


def test_the_unnamed_errors_name_the_argument():
    with pytest.raises(TypeError, match="sched must be a Schedule"):
        interpolate_schedule([0.0, 0.5, 1.0], 4)
    with pytest.raises(TypeError, match="dtype must be a torch.dtype such as torch.float64, got 'float64'"):
        bf.optimal_schedules(
            lambda x, t: -x, (2,), 2, bf.SearchSettings(grid=10, num_samples=4), dtype="float64"
        )
    with pytest.raises(
        ValueError, match=r"noise must hold at least one value per sample, got shape \(4, 0\)"
    ):
        bf.cost_matrix(lambda x, t: -x, torch.randn(4, 0), [0.0, 0.5, 1.0], progress=False)
