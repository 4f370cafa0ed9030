"""``boss-fast``: the command line. Subcommands: demo, schedule, straighten, sample, dp-example.

Only argument parsing and I/O live here; the work is in the library functions each subcommand calls.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import numpy as np

from boss_fast.models._io import WeightsFileError

# The shape of one sample of each bundled velocity model (the classifier is not a velocity model).
BUNDLED_SHAPES = {"digits_dit": (1, 8, 8), "mlp2d": (2,), "gmm2d": (2,), "gmm2d_narrow": (2,)}


def _load_velocity(spec: str):
    """A bundled model by name, or any importable velocity callable as ``module:attr``."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as err:
            raise SystemExit(f"boss-fast: cannot load velocity model {spec!r}: {err}") from None
        if not callable(obj):
            raise SystemExit(f"boss-fast: {spec!r} is not callable as velocity(x, t)")
        return obj, None
    if spec not in BUNDLED_SHAPES:
        raise SystemExit(
            f"boss-fast: unknown model {spec!r}; "
            f"use a bundled one ({', '.join(BUNDLED_SHAPES)}) or module:attr"
        )
    from boss_fast.models import load_bundled

    return load_bundled(spec), BUNDLED_SHAPES[spec]


def _shape(text: str | None, default: tuple[int, ...] | None) -> tuple[int, ...]:
    if text is None:
        if default is None:
            raise SystemExit("boss-fast: --shape is required for a module:attr model (e.g. --shape 3,32,32)")
        return default
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise SystemExit(f"boss-fast: --shape must be comma-separated integers, got {text!r}") from None
    return shape


def _cmd_demo(args) -> None:
    from boss_fast.demo import DemoConfig, run_demo

    run_demo(
        DemoConfig(
            out=args.out,
            models=tuple(m for m in args.models.split(",") if m),
            oracle=args.oracle,
            grid=args.grid,
            num_samples=args.num_samples,
            max_nfe=args.max_nfe,
            eval_samples=args.eval_samples,
            seed=args.seed,
            progress=not args.no_progress,
            straighten=args.straighten,
            straighten_iters=args.straighten_iters,
        )
    )
    with open(f"{args.out}/results.md") as f:
        print(f.read())
    print(f"report written to {args.out}/")


def _cmd_schedule(args) -> None:
    from boss_fast.schedule import optimal_schedule

    velocity, default_shape = _load_velocity(args.model)
    sched = optimal_schedule(
        velocity,
        _shape(args.shape, default_shape),
        args.steps,
        grid=args.grid,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        solver=args.solver,
        metric=args.metric,
        device=args.device,
        backend=args.backend,
        objective=args.objective,
        progress=not args.no_progress,
        checkpoint=args.checkpoint,
    )
    sched.save(args.out)
    times = np.array2string(sched.times, precision=4)
    print(f"{sched.steps}-step {sched.objective} schedule (cost {sched.cost:.6g}): {times}")
    print(f"written to {args.out}")


def _cmd_straighten(args) -> None:
    import torch

    from boss_fast.models import save_weights
    from boss_fast.schedule import Schedule
    from boss_fast.straighten import straighten

    velocity, default_shape = _load_velocity(args.model)
    if not isinstance(velocity, torch.nn.Module) or not any(
        p.is_floating_point() for p in velocity.parameters()
    ):
        raise SystemExit(f"boss-fast: {args.model!r} has no trainable weights to straighten")
    sched = Schedule.load(args.schedule)
    student, stats = straighten(
        velocity,
        sched,
        num_pairs=args.num_pairs,
        grid=sched.grid if args.grid is None else args.grid,
        solver=sched.solver,
        iters=args.iters,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        ema=args.ema,
        lora_rank=args.lora_rank,
        loss=args.loss,
        normalize=args.normalize,
        checkpoint_dir=args.checkpoint_dir,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        shape=_shape(args.shape, default_shape),
        cache_dir=args.cache_dir,
        return_stats=True,
    )
    config = student.config() if callable(getattr(student, "config", None)) else {}
    name = args.model if ":" not in args.model else args.model.replace(":", ".")
    meta = {"straightened_for": list(sched.times), "iters": stats.steps, "loss": args.loss}
    save_weights(student, args.out, name=name, config=config, metadata=meta)
    print(
        f"straightened for {sched.steps} steps ({stats.trained_share:.1%} of the parameters trained, "
        f"last loss {stats.losses[-1]:.4g}); weights written to {args.out}"
    )


def _cmd_sample(args) -> None:
    import torch

    from boss_fast._validation import atomic_write
    from boss_fast.sampler import Sampler
    from boss_fast.schedule import Schedule
    from boss_fast.trajectories import seeded_noise

    if args.weights is not None:
        from boss_fast.models import load_bundled

        if args.model not in BUNDLED_SHAPES:
            raise SystemExit("boss-fast: --weights loads a bundled model's architecture (e.g. digits_dit)")
        velocity, default_shape = load_bundled(args.model, weights=args.weights), BUNDLED_SHAPES[args.model]
    else:
        velocity, default_shape = _load_velocity(args.model)
    sched = Schedule.load(args.schedule)
    noise = seeded_noise(_shape(args.shape, default_shape), 0, args.num, seed=args.seed)
    device = args.device or ("cuda" if args.mode == "cuda_graph" else None)
    if device is not None and isinstance(velocity, torch.nn.Module):
        velocity = velocity.to(device)
    sampler = Sampler(velocity, sched, mode=args.mode, device=device)
    x = sampler(noise.to(sampler.device, sampler.dtype)).cpu()
    atomic_write(args.out, lambda f: np.save(f, x.numpy()))
    print(f"{args.num} samples after {sched.steps} steps written to {args.out} (shape {tuple(x.shape)})")
    if args.png:
        from boss_fast.report import save_sample_grid

        if x.ndim != 4:
            raise SystemExit("boss-fast: --png needs image samples (B, C, H, W)")
        save_sample_grid({f"{sched.steps} steps": x[:16, :1].numpy()}, args.png)
        print(f"grid written to {args.png}")


def _cmd_dp_example(args) -> None:
    import boss_fast as bf

    t = np.linspace(0.0, 1.0, args.grid + 1)
    # A cost with BOSS's typical shape: jumps are cheap in the middle of the trajectory, dear at both ends.
    curvature = 1.0 / (t * (1 - t) + 0.02)
    density = np.cumsum(np.r_[0.0, 0.5 * (curvature[1:] + curvature[:-1]) * np.diff(t)])
    cost = np.triu(np.subtract.outer(density, density) ** 2, 1)
    for p in bf.bellman_paths(cost, args.max_steps):
        print(f"{p.steps:3d} steps  cost {p.cost:10.4g}  times {np.array2string(t[p.indices], precision=3)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boss-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="the main job: Bellman vs uniform/shifted/EDM on the bundled digits DiT"
    )
    demo.add_argument("--out", default="report", help="report folder (default: report)")
    demo.add_argument(
        "--models", default="digits_dit,gmm2d_narrow", help="bundled models to judge, comma-separated"
    )
    demo.add_argument("--oracle", action="store_true", help="add coordinate-descent oracle rows (slower)")
    demo.add_argument("--grid", type=int, default=100)
    demo.add_argument("--num-samples", type=int, default=256, help="noises for the schedule searches")
    demo.add_argument("--max-nfe", type=int, default=10)
    demo.add_argument("--eval-samples", type=int, default=1000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument("--straighten", action="store_true", help="add straightened rows for NFE 2 and 4")
    demo.add_argument("--straighten-iters", type=int, default=800)
    demo.set_defaults(func=_cmd_demo)

    sched = sub.add_parser("schedule", help="the Bellman-optimal schedule of a velocity model, as JSON")
    sched.add_argument("--model", required=True, help=f"bundled ({', '.join(BUNDLED_SHAPES)}) or module:attr")
    sched.add_argument("--shape", help="one sample's shape, e.g. 3,32,32 (bundled models know theirs)")
    sched.add_argument("--steps", type=int, required=True)
    sched.add_argument("--grid", type=int, default=100)
    sched.add_argument("--num-samples", type=int, default=256)
    sched.add_argument("--batch-size", type=int, default=256)
    sched.add_argument("--seed", type=int, default=0)
    sched.add_argument(
        "--objective",
        default="global",
        choices=("global", "local"),
        help="global: the error at t = 1 (own-state DP); local: published BOSS (sum of one-step errors)",
    )
    sched.add_argument(
        "--solver",
        default=None,
        choices=("euler", "heun", "rk4", "dopri5"),
        help="teacher (default: heun for --objective global, euler for local)",
    )
    sched.add_argument("--metric", default="l2sq", choices=("l2sq", "l2"))
    sched.add_argument("--device", default=None)
    sched.add_argument("--backend", default="auto", choices=("auto", "cpp", "numba", "numpy"))
    sched.add_argument("--checkpoint", default=None, help="resumable partial cost sums (.npz)")
    sched.add_argument("--no-progress", action="store_true")
    sched.add_argument("--out", required=True, help="schedule JSON to write")
    sched.set_defaults(func=_cmd_schedule)

    st = sub.add_parser("straighten", help="fine-tune a model for a schedule's steps (BOSS stage 2)")
    st.add_argument("--model", required=True, help=f"bundled ({', '.join(BUNDLED_SHAPES)}) or module:attr")
    st.add_argument("--schedule", required=True, help="schedule JSON (boss-fast schedule)")
    st.add_argument("--shape", help="one sample's shape, e.g. 3,32,32 (bundled models know theirs)")
    st.add_argument(
        "--grid", type=int, default=None, help="uniform grid size to check (default: the schedule's)"
    )
    st.add_argument("--num-pairs", type=int, default=5000)
    st.add_argument("--iters", type=int, default=2000)
    st.add_argument("--batch-size", type=int, default=64)
    st.add_argument("--lr", type=float, default=2e-4)
    st.add_argument("--warmup", type=int, default=200)
    st.add_argument("--ema", type=float, default=0.999)
    st.add_argument("--lora-rank", type=int, default=None)
    st.add_argument("--loss", default="l2", choices=("l2", "pseudo_huber"))
    st.add_argument("--normalize", action="store_true", help="Simple ReFlow's 1/stopgrad(loss) weighting")
    st.add_argument("--checkpoint-dir", default=None, help="resumable training state")
    st.add_argument("--cache-dir", default=None, help="reusable teacher pairs")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--device", default=None)
    st.add_argument("--no-progress", action="store_true")
    st.add_argument("--out", required=True, help="straightened weights (.safetensors)")
    st.set_defaults(func=_cmd_straighten)

    smp = sub.add_parser("sample", help="few-step samples with a schedule JSON")
    smp.add_argument("--model", required=True)
    smp.add_argument("--schedule", required=True)
    smp.add_argument("--shape")
    smp.add_argument("--num", type=int, default=64)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--out", required=True, help="samples (.npy)")
    smp.add_argument("--png", help="also write a grid of the first 16 (image models)")
    smp.add_argument("--weights", help="straightened weights of a bundled model (boss-fast straighten --out)")
    smp.add_argument(
        "--mode",
        default="eager",
        choices=("auto", "eager", "compile", "cuda_graph"),
        help="Sampler mode (default eager: the same bits as bf.sample)",
    )
    smp.add_argument("--device", default=None, help="e.g. cuda (default: the model's device)")
    smp.set_defaults(func=_cmd_sample)

    ex = sub.add_parser("dp-example", help="solve the DP on an example cost matrix and print every schedule")
    ex.add_argument("--grid", type=int, default=100)
    ex.add_argument("--max-steps", type=int, default=10)
    ex.set_defaults(func=_cmd_dp_example)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, TypeError, FileNotFoundError, WeightsFileError) as err:
        print(f"boss-fast {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
