"""The demo's pieces: the paired bootstrap, the reference cache, and a small run that writes every file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import boss_fast as bf
from boss_fast import demo
from boss_fast._identity import model_fingerprint
from boss_fast.demo import DemoConfig, cached_reference, run_demo
from boss_fast.models import load_bundled
from boss_fast.schedule import Schedule
from boss_fast.search import SearchSettings
from boss_fast.trajectories import reference_solution, seeded_noise

# ------------------------------------------------------------------------------------------ paired bootstrap


# ---------------------------------------------------------------------------------------- reference cache


def test_reference_cache_reused_only_when_it_matches(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    flow = load_bundled("gmm2d")
    noise = seeded_noise((2,), 0, 8, seed=0, dtype=torch.float64)
    path = tmp_path / "ref.safetensors"
    fp = model_fingerprint(flow)
    ref, reused = cached_reference(flow, noise, path, fingerprint=fp)
    assert not reused
    torch.testing.assert_close(ref, reference_solution(flow, noise), rtol=0, atol=0)

    calls = []
    real = demo.reference_solution
    monkeypatch.setattr(demo, "reference_solution", lambda *a, **k: calls.append(1) or real(*a, **k))
    again, reused = cached_reference(flow, noise, path, fingerprint=fp)
    assert reused and not calls
    torch.testing.assert_close(again, ref, rtol=0, atol=0)

    # Another model, other noise, other tolerances: recomputed (and the file rewritten).
    narrow = load_bundled("gmm2d_narrow")
    other, reused = cached_reference(narrow, noise, path, fingerprint=model_fingerprint(narrow))
    assert not reused and len(calls) == 1 and not torch.equal(other, ref)
    _, reused = cached_reference(narrow, noise[:7], path, fingerprint=model_fingerprint(narrow))
    assert not reused and len(calls) == 2
    _, reused = cached_reference(narrow, noise[:7], path, fingerprint=model_fingerprint(narrow), rtol=1e-6)
    assert not reused and len(calls) == 3
    _, reused = cached_reference(narrow, noise[:7], path, fingerprint=model_fingerprint(narrow), rtol=1e-6)
    assert reused and len(calls) == 3
    # A corrupt file is recomputed, not trusted.
    path.write_bytes(b"not a safetensors file")
    _, reused = cached_reference(narrow, noise[:7], path, fingerprint=model_fingerprint(narrow), rtol=1e-6)
    assert not reused and len(calls) == 4
    # Another chunking: recomputed, one dopri5 solve per chunk, and the same endpoints to the tolerance.
    chunked, reused = cached_reference(
        narrow, noise[:7], path, fingerprint=model_fingerprint(narrow), rtol=1e-6, chunk=3
    )
    assert not reused and len(calls) == 4 + 3
    whole = reference_solution(narrow, noise[:7], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
        cached_reference(narrow, noise, path, fingerprint=model_fingerprint(narrow), chunk=0)


# ---------------------------------------------------------------------------------------------- small run


def test_demo_small_writes_every_file(tmp_path) -> None:
    cfg = DemoConfig(
        out=str(tmp_path / "rep"),
        models=("digits_dit", "gmm2d_narrow"),
        search=SearchSettings(grid=12, num_samples=8, batch_size=8),
        max_nfe=4,
        eval_samples=24,
        # Loose tolerances: the test checks the files and the cache, not the reference's accuracy.
        rtol=1e-3,
        atol=1e-3,
        bootstrap=40,
        fd_bootstrap=10,
        progress=False,
        grid_nfes=(2,),
        scatter_nfes=(2, 3),
    )
    summary = run_demo(cfg)
    rep = tmp_path / "rep"
    for name in (
        "results.md",
        "results.json",
        "quality_vs_nfe.png",
        "bellman_steps.png",
        "samples_nfe2.png",
        "reference_digits_dit.safetensors",
        "gmm2d_narrow_quality_vs_nfe.png",
        "gmm2d_narrow_steps.png",
        "gmm2d_narrow_scatter.png",
        "reference_gmm2d_narrow.safetensors",
    ):
        assert (rep / name).stat().st_size > 0, name
    for model in ("digits_dit", "gmm2d_narrow"):
        for row in demo.DEMO_SEARCHES:
            for k in range(1, 5):
                sched = Schedule.load(rep / "schedules" / f"{model}_{row.stem}_nfe{k}.json")
                assert sched.steps == k and sched.objective == row.objective
                assert sched.start == (row.start or bf.search.DEFAULT_START[row.objective])
    saved = json.loads((rep / "results.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    digits_rows = saved["models"]["digits_dit"]["results"]
    assert set(digits_rows) == {"uniform", "shifted (SD3, shift 3)", "EDM (rho 7)", demo.LOCAL, demo.PINNED,
                                demo.GLOBAL}  # fmt: skip
    for label, per_nfe in digits_rows.items():
        assert set(per_nfe) == {"1", "2", "3", "4"}
        for row in per_nfe.values():
            assert np.isfinite(row["fd"]) and row["rmse"] >= 0
            est, low, high = row["rmse_vs_uniform"]
            assert low <= est <= high or label == "uniform"
        # every schedule pinned at t = 0 is [0, 1] at K = 1 (the default's start is free)
        if label != demo.GLOBAL:
            assert per_nfe["1"]["rmse_vs_uniform"] == [0.0, 0.0, 0.0]
    gmm_rows = saved["models"]["gmm2d_narrow"]["results"]
    assert "fd" not in gmm_rows["uniform"]["2"]
    assert gmm_rows["uniform"]["4"]["rmse"] < gmm_rows["uniform"]["1"]["rmse"]
    table = (rep / "results.md").read_text()
    assert "## digits_dit" in table and "## gmm2d_narrow" in table and "| 4 |" in table
    assert saved["models"]["gmm2d_narrow"]["reference"]["reused"] is False

    # A second run in the same folder reuses both references.
    again = run_demo(cfg)
    assert all(again["models"][m]["reference"]["reused"] for m in cfg.models)
    assert again["models"]["gmm2d_narrow"]["results"] == summary["models"]["gmm2d_narrow"]["results"]


def test_demo_refuses_bad_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="max_nfe"):
        run_demo(DemoConfig(out=str(tmp_path), search=SearchSettings(grid=5), max_nfe=6))
    with pytest.raises(ValueError, match="models"):
        run_demo(DemoConfig(out=str(tmp_path), models=("imagenet",)))


def test_shared_first_velocity_is_exact_and_computed_once() -> None:
    calls = []
    model = load_bundled("digits_dit")

    def counted(x, t):
        calls.append(x.shape[0])
        return model(x, t)

    noise = seeded_noise((1, 8, 8), 0, 6, seed=1)
    shared = demo._SharedFirstVelocity(counted, noise)
    with torch.no_grad():
        for times in ([0.0, 0.5, 1.0], [0.0, 0.3, 0.8, 1.0], [0.0, 1.0]):
            sampler = demo.Sampler(shared, times, mode="eager", batch_size=6)
            plain = demo.Sampler(model, times, mode="eager", batch_size=6)
            torch.testing.assert_close(sampler(noise), plain(noise), rtol=0, atol=0)
        # Anything but (noise, t = 0) reaches the model.
        torch.testing.assert_close(shared(noise, torch.full((6,), 0.5)), model(noise, torch.full((6,), 0.5)))
        torch.testing.assert_close(shared(noise + 1, torch.zeros(6)), model(noise + 1, torch.zeros(6)))
    # Full-batch calls: the first velocity once, then the 1 + 2 later steps; the rest are one-row checks.
    assert [c for c in calls if c == 6] == [6] * 6


def test_evaluation_in_chunks_matches_one_batch(monkeypatch) -> None:
    # The demo evaluates in chunks of EVAL_CHUNK with the first velocity shared per chunk: the per-sample
    # errors must be those of one batch (up to the float32 rounding a different batch size may bring).
    model = load_bundled("digits_dit")
    spec = demo.DEMO_MODELS["digits_dit"]
    noise = seeded_noise((1, 8, 8), 0, 10, seed=1)
    reference = torch.zeros_like(noise)
    schedules = {
        "a": {1: np.array([0.0, 1.0]), 2: np.array([0.0, 0.5, 1.0])},
        "b": {2: np.array([0.0, 0.3, 1.0])},
    }
    cfg = DemoConfig(progress=False)
    clock = demo._Clock(False)
    with torch.no_grad():
        whole = demo._evaluate(cfg, model, spec, noise, reference, schedules, {2}, clock, "x")
        monkeypatch.setattr(demo, "EVAL_CHUNK", 3)
        chunked = demo._evaluate(cfg, model, spec, noise, reference, schedules, {2}, clock, "x")
    for label, per in schedules.items():
        for k in per:
            np.testing.assert_allclose(chunked[label][k].sq_err, whole[label][k].sq_err, rtol=1e-5)
            assert chunked[label][k].sq_err.shape == (10,)
            assert (chunked[label][k].shown is None) == (k != 2)
    assert not np.allclose(chunked["a"][2].sq_err, chunked["b"][2].sq_err)


def test_demo_refuses_a_bad_search_before_any_work(tmp_path) -> None:
    out = str(tmp_path / "rep")
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        run_demo(DemoConfig(out=out, search=SearchSettings(num_samples=0), progress=False))
    with pytest.raises(ValueError, match="search.grid must be an int"):
        DemoConfig(out=out, search=SearchSettings(grid=[0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="search.num_samples must be an integer here"):
        DemoConfig(out=out, search=SearchSettings(num_samples="auto"))
    with pytest.raises(
        ValueError, match="the demo runs every row; with objective='global', start='zero': discount"
    ):
        DemoConfig(out=out, search=SearchSettings(objective="local", discount=0.9))
    with pytest.raises(TypeError, match="search must be a SearchSettings or None, got dict"):
        DemoConfig(out=out, search={"grid": 100})
    assert not (tmp_path / "rep").exists()


def test_demo_search_settings_per_model() -> None:
    """None: each model's measured noises in one batch, grid 100, seed 0; given: the same for every model."""
    spec = demo.DEMO_MODELS["digits_dit"]
    default = DemoConfig()
    local, free = demo.DEMO_SEARCHES[0], demo.DEMO_SEARCHES[-1]
    assert default.search_for(spec, local) == SearchSettings(
        num_samples=128, batch_size=128, objective="local", start="zero"
    )
    assert (default.grid, default.seed) == (100, 0)
    given = DemoConfig(search=SearchSettings(grid=30, num_samples=16, seed=4))
    assert given.search_for(spec, free) == SearchSettings(grid=30, num_samples=16, seed=4)
    assert (given.grid, given.seed) == (30, 4)


def test_demo_rows_with_a_free_start_and_the_oracle_moving_it(tmp_path) -> None:
    """A searched row with a free start: its schedules (and the oracle's, started from them) carry the rule,
    are sampled from it, and are paired with every row of ``versus``."""
    rows = (demo.DemoSearch(demo.PINNED, "global_pinned", "global", "zero"),
            demo.DemoSearch(demo.GLOBAL, "global", "global", "noise"))  # fmt: skip
    cfg = DemoConfig(
        out=str(tmp_path / "rep"), models=("gmm2d_narrow",), progress=False, max_nfe=3, eval_samples=24,
        search=SearchSettings(grid=12, num_samples=16, batch_size=16), searches=rows,
        versus=("uniform", demo.PINNED), oracle=True, oracle_max_nfe=3, rtol=1e-3, atol=1e-3, bootstrap=20,
        scatter_nfes=(2,),
    )  # fmt: skip
    saved = run_demo(cfg)["models"]["gmm2d_narrow"]
    assert saved["search"][demo.GLOBAL]["start"] == "noise"
    assert saved["schedules"][demo.GLOBAL]["1"][0] > 0.0  # one step from the noise starts late on this flow
    row = saved["results"][demo.GLOBAL]["2"]
    assert set(row) == {"rmse", "rmse_vs_uniform", f"rmse_vs_{demo.PINNED}"}
    assert saved["results"][demo.PINNED]["2"][f"rmse_vs_{demo.PINNED}"] == [0.0, 0.0, 0.0]
    assert saved["starts"][demo.ORACLE] == {"1": "noise", "2": "noise", "3": "noise"}
    assert saved["starts"][demo.PINNED]["2"] == "zero" and saved["starts"]["uniform"]["2"] == "noise"
    with pytest.raises(ValueError, match="distinct labels"):
        DemoConfig(searches=(rows[0], rows[0]))
    with pytest.raises(ValueError, match="versus must be a tuple of row labels"):
        DemoConfig(versus=("best",))
