"""Straightening (BOSS stage 2): fine-tune a velocity network for exactly the steps its schedule takes.

Nguyen, Nguyen & Nguyen (ICLR 2024), section 4: from M noises run the teacher's fine trajectory on the
schedule's base grid, keep the states at the schedule's times tau_0 < ... < tau_K, and train the student
(initialised from the teacher's weights) so that one Euler step of each interval lands on the teacher:

    L = E_{m, k} || v_theta(x_k, tau_k) - (x_{k+1} - x_k) / (tau_{k+1} - tau_k) ||^2.

By default (``StraightenSettings.inputs="sampler"``) x_k for k >= 1 is the sampler's own state instead, the
student's Euler steps from the start state (no gradient through them), in both the input and the target, so
each step learns to land on the teacher from where the few-step sampler is; ``inputs="teacher"`` is the above.

Conventions: t in [0, 1], t = 0 noise, t = 1 data; ``velocity(x, t)`` with x (B, ...) and t (B,).

One file per stage, each importing only from those listed before it (import-linter checks it):

- :mod:`~boss_fast.straighten.loss`: ``pair_loss`` ("l2", "pseudo_huber", Simple ReFlow's normalisation);
- :mod:`~boss_fast.straighten.settings`: ``StraightenSettings`` (every knob, checked, with the measured
  defaults ``FULL_LR``, ``LORA_LR``, ``LORA_ALPHA_PER_RANK``, ``PAIR_STEPS``, ``PAIR_SOLVER``),
  ``PairTeacher`` and ``StraightenMemory``;
- :mod:`~boss_fast.straighten.pairs`: ``straightening_pairs`` (streamed, cached in shards), ``pair_grid``,
  ``pair_density``;
- :mod:`~boss_fast.straighten.lora`: ``add_lora``, ``default_lora_targets``, ``merge_lora`` (peft);
- :mod:`~boss_fast.straighten.checkpoint`: the train state (parameters, EMA, Adam, generator) and its
  checkpoint, ``straighten.pt``: header, atomic save, checked resume;
- :mod:`~boss_fast.straighten.train`: ``straighten`` (the run: pairs, student, steps with warm-up, gradient
  clipping at 1.0 and EMA, checkpoints, DDP when a ``torch.distributed`` process group is initialised) and
  ``StraightenStats``.

This package re-exports the public names; ``boss_fast.straighten`` the attribute of ``boss_fast`` is the
function (``importlib.import_module("boss_fast.straighten")`` gives this package).
"""

from boss_fast.straighten.lora import add_lora, default_lora_targets, merge_lora
from boss_fast.straighten.loss import LOSSES, pair_loss
from boss_fast.straighten.pairs import StraighteningPairs, pair_grid, straightening_pairs
from boss_fast.straighten.settings import FULL_LR as FULL_LR
from boss_fast.straighten.settings import LORA_ALPHA_PER_RANK as LORA_ALPHA_PER_RANK
from boss_fast.straighten.settings import LORA_LR as LORA_LR
from boss_fast.straighten.settings import PairTeacher, StraightenMemory, StraightenSettings
from boss_fast.straighten.train import StraightenStats, straighten

# The same names as before the package (FULL_LR, LORA_LR and LORA_ALPHA_PER_RANK stay importable from here,
# outside __all__ as before).
__all__ = [
    "LOSSES",
    "PairTeacher",
    "StraighteningPairs",
    "StraightenMemory",
    "StraightenStats",
    "add_lora",
    "default_lora_targets",
    "merge_lora",
    "pair_grid",
    "pair_loss",
    "StraightenSettings",
    "straighten",
    "straightening_pairs",
]
