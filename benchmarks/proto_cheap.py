"""Prototype (exploration only): cheaper routes to the global schedule, evaluations counted."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

import boss_fast as bf
from boss_fast.demo import DEMO_MODELS
from boss_fast.models import load_bundled


class Counted(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x, t):
        self.rows += x.shape[0]
        return self.model(x, t)


def teacher(model, noise, times):
    with torch.no_grad():
        return bf.teacher_trajectory(model, noise, times, "heun", keep="states").states


def teacher_hermite(model, noise, times, stride=2):
    """Heun on every stride-th grid point; the points between by cubic Hermite interpolation (slopes at both
    ends): (2 / stride) evaluations per fine step instead of 2."""
    coarse = times[::stride]
    assert (len(times) - 1) % stride == 0
    with torch.no_grad():
        tr = bf.teacher_trajectory(model, noise, coarse, "heun", keep="all")
        xs = tr.states
        last = model(xs[-1], torch.full((len(noise),), float(coarse[-1])))
        vs = torch.cat([tr.velocities, last[None]])
    out = torch.empty((len(times),) + tuple(noise.shape), dtype=noise.dtype)
    out[::stride] = xs
    h = torch.tensor(np.diff(coarse)).view(-1, *([1] * noise.dim())).to(noise.dtype)
    for m in range(1, stride):
        th = m / stride
        h00, h10, h01, h11 = 2 * th**3 - 3 * th**2 + 1, th**3 - 2 * th**2 + th, -2 * th**3 + 3 * th**2, th**3 - th**2
        out[m::stride] = h00 * xs[:-1] + h01 * xs[1:] + h * (h10 * vs[:-1] + h11 * vs[1:])
    return out


def restricted_dp(model, noise, teach, times, kmax, sources):
    """sources(level, costs, pointers) -> allowed source indices at that level (level >= 2)."""
    n = len(times)
    hosts = times.tolist()
    states = torch.empty_like(teach)
    states[0] = noise
    vel = torch.zeros_like(teach[:-1])
    costs = np.full((kmax + 1, n), np.inf)
    ptrs = np.full((kmax + 1, n), -1)
    tt = torch.tensor(times, dtype=torch.float64)
    t64 = teach.double()
    for level in range(1, kmax + 1):
        if level >= 2:
            new = torch.empty_like(states)
            for j in range(level - 1, n):
                i = int(ptrs[level - 1, j])
                new[j] = states[i] + (hosts[j] - hosts[i]) * vel[i]
            states = new
            src = np.asarray(sources(level, costs, ptrs))
        else:
            src = np.array([0])
        mean = np.full((n, n), np.inf)
        with torch.no_grad():
            for i in src:
                i = int(i)
                vel[i] = model(states[i], torch.full((len(noise),), hosts[i]))
                h = (tt[i + 1 :] - tt[i]).view(-1, *([1] * (teach.dim() - 1)))
                e = t64[i + 1 :] - (states[i].double() + h * vel[i].double())
                mean[i, i + 1 :] = e.flatten(2).square().sum(2).mean(1).numpy()
        best = np.argmin(mean, axis=0)
        c = mean[best, np.arange(n)]
        costs[level, level:] = c[level:]
        ptrs[level, level:] = best[level:]
    return costs, ptrs


def paths(costs, ptrs):
    n = costs.shape[1]
    out = {}
    for k in range(1, costs.shape[0]):
        idx = [n - 1]
        for level in range(k, 0, -1):
            idx.append(int(ptrs[level, idx[-1]]))
        out[k] = np.array(idx[::-1])
    return out


def full(level, costs, ptrs):
    return np.arange(level - 1, costs.shape[1] - 1)


def windows_from(knots_by_k, r, n, kmax):
    """Per level: union of +-r around knot (level - 1) of every budget >= level."""
    table = {}
    for level in range(2, kmax + 1):
        s = set()
        for k, idx in knots_by_k.items():
            if k >= level:
                c = idx[level - 1]
                s.update(range(max(level - 1, c - r), min(n - 2, c + r) + 1))
        table[level] = np.array(sorted(s))
    return lambda level, costs, ptrs: table[level]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="digits_dit")
    p.add_argument("--m", type=int, default=128)
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--variants", default="full,grid33,grid40,grid50")
    a = p.parse_args()
    torch.set_num_threads(1)
    spec = DEMO_MODELS[a.model]
    model = Counted(load_bundled(a.model).eval())
    shape, dtype = spec.shape, spec.dtype
    kmax = 10
    noise = bf.seeded_noise(shape, 0, a.m, seed=0, dtype=dtype)
    ev = bf.seeded_noise(shape, 0, a.eval, seed=1, dtype=dtype)
    ref = torch.cat([bf.reference_solution(model, c) for c in ev.split(250)])

    def rmse(times):
        return float((bf.sample(model, ev, times).double() - ref.double()).square().mean().sqrt())

    results = {}
    fine = bf.uniform_grid(100)
    cache = {}

    def run(name):
        model.rows = 0
        t0 = time.perf_counter()
        if name == "full":
            teach = teacher(model, noise, fine)
            cache["teach"] = teach
            c, pt = restricted_dp(model, noise, teach, fine, kmax, full)
            sched = {k: fine[v] for k, v in paths(c, pt).items()}
            cache["full_idx"] = paths(c, pt)
        elif name.startswith(("h", "q", "w")):  # Hermite teacher (Heun stride 2 or 4), then the variant's DP
            teach = teacher_hermite(model, noise, fine, 4 if name[0] == "q" else 2)
            cache["teach"] = teach
            sub_name = name[1:]
            if sub_name == "full":
                c, pt = restricted_dp(model, noise, teach, fine, kmax, full)
            elif sub_name.startswith("c2f"):
                body, _, div = sub_name[3:].partition("m")
                s, r = (int(x) for x in body.split("r"))
                mc = len(noise) // int(div or 1)
                sub = np.arange(0, 101, s)
                tc = teacher(model, noise[:mc], fine[sub]) if name[0] == "w" else teach[sub, :mc]
                c, pt = restricted_dp(model, noise[:mc], tc, fine[sub], kmax, full)
                knots = {k: sub[v] for k, v in paths(c, pt).items()}
                c, pt = restricted_dp(model, noise, teach, fine, kmax, windows_from(knots, r, len(fine), kmax))
            elif sub_name.startswith("pilot"):
                m, r = (int(x) for x in sub_name[5:].split("r"))
                c, pt = restricted_dp(model, noise[:m], teach[:, :m], fine, kmax, full)
                w = windows_from(paths(c, pt), r, len(fine), kmax)
                c, pt = restricted_dp(model, noise, teach, fine, kmax, w)
            sched = {k: fine[v] for k, v in paths(c, pt).items()}
        elif name.startswith("grid"):
            g = bf.uniform_grid(int(name[4:]))
            teach = teacher(model, noise, g)
            c, pt = restricted_dp(model, noise, teach, g, kmax, full)
            sched = {k: g[v] for k, v in paths(c, pt).items()}
        elif name.startswith("pilot"):  # pilot<m>r<r>: full DP on m noises, windows +-r on all
            m, r = (int(x) for x in name[5:].split("r"))
            teach = teacher(model, noise, fine)
            c, pt = restricted_dp(model, noise[:m], teach[:, :m], fine, kmax, full)
            w = windows_from(paths(c, pt), r, len(fine), kmax)
            c, pt = restricted_dp(model, noise, teach, fine, kmax, w)
            sched = {k: fine[v] for k, v in paths(c, pt).items()}
        elif name.startswith("c2f"):  # c2f<s>r<r>: DP on every s-th point, then windows +-r on the fine grid
            s, r = (int(x) for x in name[3:].split("r"))
            teach = teacher(model, noise, fine)
            sub = np.arange(0, 101, s)
            c, pt = restricted_dp(model, noise, teach[sub], fine[sub], kmax, full)
            knots = {k: sub[v] for k, v in paths(c, pt).items()}
            w = windows_from(knots, r, len(fine), kmax)
            c, pt = restricted_dp(model, noise, teach, fine, kmax, w)
            sched = {k: fine[v] for k, v in paths(c, pt).items()}
        elif name.startswith("oracle"):  # windows around the full DP's own knots: the floor of windows
            r = int(name[6:])
            teach = cache["teach"]
            w = windows_from(cache["full_idx"], r, len(fine), kmax)
            c, pt = restricted_dp(model, noise, teach, fine, kmax, w)
            sched = {k: fine[v] for k, v in paths(c, pt).items()}
        secs = time.perf_counter() - t0
        evals = model.rows / a.m
        res = {k: rmse(sched[k]) for k in range(1, kmax + 1)}
        results[name] = res
        base = results.get("full")
        rel = [res[k] / base[k] - 1 for k in res] if base else []
        print(
            f"{name}: {evals:.0f} evals/noise, {secs:.1f}s, worst rel {max(rel, default=0):+.4f} "
            f"rel {[round(100 * x, 2) for x in rel]}",
            flush=True,
        )
        print("   abs", [round(res[k], 5) for k in res], flush=True)

    for name in a.variants.split(","):
        run(name)


if __name__ == "__main__":
    sys.exit(main())
