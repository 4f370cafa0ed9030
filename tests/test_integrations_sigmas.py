"""diffusers_sigmas without diffusers: closed-form inverses of the stock scheduler's shifts (the comparison
with diffusers' own scheduler is in test_integrations_diffusers.py)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import boss_fast as bf
from boss_fast.integrations import diffusers_sigmas
from boss_fast.integrations.sigmas import comfyui_text

TIMES = np.array([0.0, 0.25, 0.5, 1.0])


def test_static_shift_closed_form():
    # sigma' = 3 sigma / (1 + 2 sigma) maps the returned sigmas onto 1 - t.
    got = np.array(diffusers_sigmas(TIMES, shift=3.0))
    np.testing.assert_allclose(3.0 * got / (1.0 + 2.0 * got), 1.0 - TIMES[:-1], rtol=1e-15)
    sched = bf.Schedule(times=TIMES, indices=np.arange(4), cost=0.0, grid=TIMES)
    assert diffusers_sigmas(sched, shift=3.0) == got.tolist()
    assert diffusers_sigmas(TIMES) == (1.0 - TIMES[:-1]).tolist()  # no shift: the schedule's own sigmas


def test_dynamic_shift_closed_form():
    mu = 0.7
    got = np.array(diffusers_sigmas(TIMES, mu=mu))
    np.testing.assert_allclose(np.exp(mu) / (np.exp(mu) + 1.0 / got - 1.0), 1.0 - TIMES[:-1], rtol=1e-15)


@pytest.mark.parametrize("key", ["invert_sigmas", "stochastic_sampling", "use_beta_sigmas", "shift_terminal"])
def test_config_keys_it_cannot_honour(key):
    with pytest.raises(ValueError, match=key):
        diffusers_sigmas(TIMES, config={key: True})


def test_works_without_diffusers():
    code = (
        "import sys; sys.modules['diffusers'] = None\n"
        "from boss_fast.integrations import diffusers_sigmas\n"
        "print(diffusers_sigmas([0.0, 0.5, 1.0], shift=3.0))\n"
        "assert 'diffusers' not in {m.split('.')[0] for m, v in sys.modules.items() if v is not None}\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[1.0, 0.25]"


# -- the comfyui text: what ComfyUI's sigma-text nodes read back ---------------------------------------------


def manual_sigmas(text: str) -> torch.Tensor:
    """ComfyUI's stock ``ManualSigmas`` node (comfy_extras/nodes_custom_sampler.py, ComfyUI PR 11499):
    ``re.findall(r"[-+]?(?:\\d*\\.*\\d+)", sigmas)``, each match through ``float``, then
    ``torch.FloatTensor``. Every character outside those runs separates values: "5e-05" gives 5.0 and -5.0."""
    return torch.FloatTensor([float(v) for v in re.findall(r"[-+]?(?:\d*\.*\d+)", text)])


def custom_sigmas(text: str, interpolate_to_steps: int) -> torch.Tensor:
    """KJNodes' ``CustomSigmas`` node (ComfyUI-KJNodes, nodes/curve_nodes.py): ``sigmas_string.split(', ')``,
    ``float`` each, ``torch.FloatTensor``; when ``len != interpolate_to_steps + 1`` it resamples log-linearly
    (so interpolate_to_steps must be K, one less than the number of values: not modelled here, refused);
    then ``sigmas[-1] = 0``."""
    values = torch.FloatTensor([float(v) for v in text.split(", ")])
    if len(values) != interpolate_to_steps + 1:
        raise AssertionError("CustomSigmas would resample this list")
    values[-1] = 0
    return values


# Sigmas down to 1e-6, with values whose shortest float64 repr has an exponent (5e-05, 1e-06) or 17 digits.
TINY = np.array([1.0, 0.7, 0.31999999999999995, 1e-2, 4.999999999999449e-05, 3e-6, 1e-6, 0.0])


@pytest.mark.parametrize("sigmas", [TINY, 1.0 - np.r_[0.0, np.sort(np.random.default_rng(0).random(9)), 1.0]],
                         ids=["tiny", "random"])  # fmt: skip
def test_comfyui_text_parses_back_exactly(sigmas):
    text = comfyui_text(sigmas)
    want = torch.tensor(sigmas.tolist(), dtype=torch.float32)  # what a SIGMAS tensor holds
    assert "e" not in text.lower() and "inf" not in text and "nan" not in text.lower()
    assert torch.equal(manual_sigmas(text), want)
    assert torch.equal(custom_sigmas(text, len(sigmas) - 1), want)


def test_the_old_repr_text_fails_manual_sigmas():
    """The control: shortest float64 repr (what `--format comfyui` printed before) breaks ManualSigmas."""
    text = ", ".join(repr(v) for v in TINY.tolist())
    assert len(manual_sigmas(text)) > len(TINY)  # "4.999...e-05" became two values


def test_comfyui_text_digits():
    assert comfyui_text([1.0, 0.5, 0.0]) == "1, 0.5, 0"
    assert comfyui_text([1e-6]) == "0.000001"
    with pytest.raises(ValueError, match="finite"):
        comfyui_text([1.0, float("nan")])


# Refusals: nothing silently wrong (from the former tests/test_refusals.py)

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
