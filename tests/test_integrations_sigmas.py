"""diffusers_sigmas without diffusers: closed-form inverses of the stock scheduler's shifts (the comparison
with diffusers' own scheduler is in test_integrations_diffusers.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import boss_fast as bf
from boss_fast.integrations import diffusers_sigmas

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
