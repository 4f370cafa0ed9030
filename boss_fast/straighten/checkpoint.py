"""The training checkpoint of a straightening run: the train state (trained parameters, EMA, Adam, the
pair-drawing generator, step, losses), its header (format, version, the model's and the teacher's identity,
the schedule, the noise's digest, the settings that must match) and its atomic save / checked resume.

The file (``straighten.pt``, format ``boss_fast.straighten``, version 2) holds a JSON header string and the
state's tensors; it carries a SHA-256 of everything beside the header.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from boss_fast._header import check_header, make_header, write_file
from boss_fast._identity import model_fingerprint, noise_digest, value_digest
from boss_fast.ode import VelocityFn
from boss_fast.schedule import Schedule
from boss_fast.straighten.settings import StraightenSettings

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "TrainState",
    "check_not_past",
    "check_resumable",
    "checkpoint_config",
    "checkpoint_header",
    "teacher_identity",
]

CHECKPOINT_FORMAT = "boss_fast.straighten"
CHECKPOINT_VERSION = 2  # 2: the wider model fingerprint, checkpoint_key, checksums and run identity
CHECKPOINT_NAME = "straighten.pt"


@dataclass(frozen=True)
class _Config:
    """The settings a checkpoint must share with the run resuming it (stored in its header)."""

    num_pairs: int
    grid: list
    solver: str
    iters: int
    batch_size: int
    lr: float
    warmup: int
    ema: float
    ema_warmup: bool
    lora_rank: int | None
    lora_targets: str | list | None
    loss: str
    normalize: bool
    seed: int
    world_size: int


def checkpoint_config(
    settings: StraightenSettings, sched: Schedule, solver: str, num_pairs: int, world: int
) -> dict:
    """The checkpoint header's settings (the keys and values of checkpoint version 2, unchanged): what a run
    resuming the checkpoint must share with the run that wrote it. ``solver``: the teacher's, resolved."""
    s = settings
    targets = s.lora_targets if isinstance(s.lora_targets, str | None) else list(s.lora_targets)
    config = asdict(
        _Config(
            num_pairs=num_pairs,
            grid=sched.grid.tolist(),
            solver=solver,
            iters=s.iters,
            batch_size=s.batch_size,
            lr=s.lr,
            warmup=s.warmup,
            ema=s.ema,
            ema_warmup=s.ema_warmup,
            lora_rank=s.lora_rank,
            lora_targets=targets,
            loss=s.loss,
            normalize=s.normalize,
            seed=s.seed,
            world_size=world,
        )
    )
    config.pop("iters")  # a run may be extended: resuming with more iterations is allowed
    if s.memory.autocast is not None:  # only when set: checkpoints from before the option still fit
        config["autocast"] = str(s.memory.autocast)
    for key in ("pair_steps", "pair_solver"):  # likewise: only when set
        if getattr(s, key) is not None:
            config[key] = getattr(s, key)
    if s.pair_spacing != "uniform":  # likewise: only when not the spacing every earlier run had
        config["pair_spacing"] = s.pair_spacing
    if s.inputs != "teacher":  # likewise: only when not the inputs every earlier run had
        config["inputs"] = s.inputs
    if s.lora_alpha is not None and s.lora_alpha != s.lora_rank:  # before: alpha was the rank, unstored
        config["lora_alpha"] = s.lora_alpha
    return config


def teacher_identity(teacher: VelocityFn) -> str:
    """A teacher's identity in a checkpoint header: its fingerprint when it is a module, else ""."""
    return model_fingerprint(teacher) if isinstance(teacher, nn.Module) else ""


def checkpoint_header(
    model_fp: str, sched: Schedule, config: dict, teacher_id: str, noise: torch.Tensor
) -> dict:
    return make_header(
        CHECKPOINT_FORMAT,
        CHECKPOINT_VERSION,
        model_fingerprint=model_fp,
        schedule=sched.to_dict(),
        config=config,
        teacher=teacher_id,
        noise=noise_digest(noise),
    )


def _payload_sha256(state: dict) -> str:
    """SHA-256 of everything a straightening checkpoint holds beside its header."""
    return value_digest({key: value for key, value in state.items() if key != "header"})


def _check_header(header: object, expected: dict, path: str) -> None:
    """Refuse a checkpoint of another format, version or run (``_header.check_header``), naming the model,
    the schedule or the settings that differ."""
    check_header(
        header,
        expected,
        path,
        "straightening checkpoint",
        remedy="use another checkpoint_dir",
        explain=lambda key: _mismatch(header, expected, path, key),
    )


def _mismatch(header: dict, expected: dict, path: str, key: str) -> str:
    if key == "model_fingerprint":
        return (
            f"{path} was written for model {header.get('model_fingerprint')!r}, not this model "
            f"({expected['model_fingerprint']!r}); use another checkpoint_dir"
        )
    if key == "schedule":
        return f"{path} was written for a different schedule; use another checkpoint_dir"
    if key == "config":
        stored_config = header.get("config") or {}
        wanted = expected["config"]
        diff = {
            k: (stored_config.get(k), wanted.get(k))
            for k in dict.fromkeys([*wanted, *stored_config])  # a key either side, in order
            if stored_config.get(k) != wanted.get(k)
        }
        hint = ""
        if any(k.startswith("pair_") and k not in stored_config for k in diff):
            hint += (
                "; it was written with the schedule's own pair teacher (the default before PAIR_STEPS Heun "
                "steps): to resume it, pass pair_steps=None, pair_solver=None (--pair-steps grid "
                "--pair-solver schedule)"
            )
        if "inputs" in diff and "inputs" not in stored_config:
            hint += (
                "; it was written with the teacher's states as inputs (the default before the sampler's): "
                "to resume it, pass inputs='teacher' (--inputs teacher)"
            )
        return f"{path} was written with other settings (stored, requested): {diff}{hint}"
    return f"{path} has another {key} ({header.get(key)!r}); use another checkpoint_dir"


def check_resumable(path: str, header: dict, device: torch.device | str = "cpu") -> dict:
    """The checkpoint at ``path`` as saved (``TrainState.save``) after checking that it is readable, belongs
    to the run of ``header`` (model, schedule, settings, noise) and passes its checksum; a clear
    ``ValueError`` otherwise. :func:`~boss_fast.straighten.straighten` calls it (loading to the host) before
    the pairs' teacher runs, so another run's checkpoint costs no teacher evaluation, and resumes from what it
    returned (``TrainState.resume``): the file is read once."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        saved_header = json.loads(state["header"])
    except (
        OSError,
        RuntimeError,
        EOFError,
        KeyError,
        TypeError,
        ValueError,
        pickle.UnpicklingError,
    ) as err:
        raise ValueError(
            f"straighten checkpoint {path} is unreadable (corrupted or not a checkpoint: {err}); "
            "delete it or use another checkpoint_dir"
        ) from None
    _check_header(saved_header, header, path)
    if saved_header.get("sha256") != _payload_sha256(state):
        raise ValueError(
            f"straighten checkpoint {path} fails its checksum (sha256 of its parameters, EMA, optimiser, "
            "generator, step and losses): the file is corrupt; delete it or use another checkpoint_dir"
        )
    return state


def check_not_past(step: int, iters: int, path: str) -> None:
    """Refuse a checkpoint whose run went past ``iters``: its weights are step ``step``'s, and the step
    ``iters`` state is not kept. A run at or before ``iters`` resumes (training does not depend on ``iters``,
    so a run extended from a shorter one equals a run of ``iters`` from the start)."""
    if step > iters:
        raise ValueError(
            f"straightening checkpoint {path} holds a run at step {step}, past iters = {iters}: its weights "
            f"are not a {iters}-step run's; ask for iters >= {step} to go on from it, or use another "
            "checkpoint_dir"
        )


@dataclass
class TrainState:
    """What a step changes and a checkpoint keeps: the trained parameters, their EMA, the optimiser, the
    pair-drawing generator, the step count and the losses so far."""

    params: list[torch.Tensor]
    averaged: list[torch.Tensor]
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    losses: list[float] = field(default_factory=list)

    @classmethod
    def start(cls, params: list[torch.Tensor], lr: float, seed: int) -> TrainState:
        averaged = [p.detach().clone() for p in params]
        return cls(params, averaged, torch.optim.Adam(params, lr=lr), torch.Generator().manual_seed(seed))

    def update_ema(self, decay: float) -> None:
        with torch.no_grad():
            torch._foreach_lerp_(self.averaged, [p.detach() for p in self.params], 1.0 - decay)

    def use_ema(self) -> None:
        """Copy the EMA into the trained parameters (what the run returns)."""
        with torch.no_grad():
            for p, a in zip(self.params, self.averaged, strict=True):
                p.copy_(a)

    def save(self, path: str, header: dict) -> None:
        state = {
            "header": json.dumps(header),
            "params": [p.detach().cpu() for p in self.params],
            "ema": [a.cpu() for a in self.averaged],
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "losses": torch.tensor(self.losses, dtype=torch.float64),
        }
        state["header"] = json.dumps({**header, "sha256": _payload_sha256(state)})
        write_file(path, lambda f: torch.save(state, f))

    def resume(self, state: dict) -> None:
        """Take up a checkpoint written by ``save``, as :func:`check_resumable` returned it (checked against
        this run; its tensors on any device: they are copied onto the parameters')."""
        with torch.no_grad():
            for p, saved in zip(self.params, state["params"], strict=True):
                p.copy_(saved)
            for a, saved in zip(self.averaged, state["ema"], strict=True):
                a.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.losses = [float(v) for v in state["losses"].tolist()]
