"""benchmarks/gpu/: the GPU device script must not rot between the rare runs on a CUDA machine.

The full guard is the stand-in (``benchmarks/gpu/simulate.sh``, run by ``.ci/run``); these are its fast parts:
the device's pytest options collect every GPU test without the packages the device lacks, a missing figure
file is a miss (not a crash), the targets read device-shaped files right, the production configs build the
published models, and the search figures detect the stores the installed search offers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.gpu import check_targets, production, search_figures, tune_head

ROOT = Path(__file__).resolve().parents[1]


def test_device_pytest_collects_gpu_tests_without_diffusers_or_the_readme_plugin(tmp_path):
    """``run.sh collect``: the project's config minus the README plugin, diffusers unimportable."""
    blocked = tmp_path / "blocked" / "diffusers"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('the device machine has no diffusers')\n")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": f"{blocked.parent}{os.pathsep}{ROOT}",
        "PYTEST_ADDOPTS": "-p no:pytest_markdown_docs",
    }
    done = subprocess.run(
        ["bash", "benchmarks/gpu/run.sh", "collect"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for test in (
        "test_kernels_euler_step.py::test_cuda_kernel",
        "test_sampler.py::test_cuda_graph_equals_sample",
        "test_bench_sampler.py::test_fused_head",
        "test_bench_sampler.py::test_compile",
        "test_sampler.py::test_compile_graph_equals_sample",
        "test_bench_sampler.py::test_compile_graph[",
    ):
        assert test in done.stdout, test


def test_missing_figures_are_misses_not_a_crash(tmp_path, capsys):
    env = tmp_path / "env.txt"
    env.write_text("device: NO CUDA DEVICE\n")
    cut = tmp_path / "cut.json"
    cut.write_text('{"benchmarks": [')  # a step killed while writing
    assert check_targets.main(["check_targets.py", str(env), str(tmp_path / "absent.json"), str(cut)]) == 1
    misses = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| MISS")]
    assert len(misses) == 4 and "absent.json: no figures" in misses[0] and "cut.json" in misses[1]
    assert all("no CUDA device" in line for line in misses[2:])


def test_merge_keeps_every_case(tmp_path):
    runs = []
    for i in range(2):
        path = tmp_path / f"b{i}.json"
        case = {"group": "g", "name": f"test_{i}", "stats": {"median": 1.0}}
        path.write_text(json.dumps({"machine_info": {"node": "x"}, "benchmarks": [case]}))
        runs.append(str(path))
    out = tmp_path / "merged.json"
    check_targets.merge(str(out), [*runs, str(tmp_path / "absent.json")])
    merged = json.loads(out.read_text())
    assert [b["name"] for b in merged["benchmarks"]] == ["test_0", "test_1"]
    assert merged["machine_info"] == {"node": "x"} and not list(tmp_path.glob("*.tmp"))


def test_search_figures_try_the_stores_the_search_offers(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class WithoutStore:
        grid: int = 100

    monkeypatch.setattr(search_figures.bf, "SearchSettings", WithoutStore)
    stores, missing = search_figures.available_stores()
    assert stores == [None] and set(missing) == {"device", "host", "disk"}
    monkeypatch.undo()
    assert search_figures.available_stores() == (["device", "host", "disk"], {})


@pytest.mark.parametrize("script", ["run.sh", "simulate.sh"])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu" / script)]).returncode == 0


def test_run_sh_refuses_an_unknown_call():
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu/run.sh"), "figurs"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "usage: run.sh correctness|production|figures" in done.stderr


def _bench_case(group: str, name: str, median: float, **extra) -> dict:
    return {"group": group, "name": name, "stats": {"median": median}, "extra_info": extra}


def _fused_doc() -> dict:
    """tune_head's summary and tables over hand-made rows: bf16 at batch 64 wins (1.25x), the rest lose."""
    cases = {}
    for dtype in ("float32", "bfloat16"):
        cases[dtype] = {}
        for batch in ("1", "16", "64"):
            fused_us = 8.0 if (dtype, batch) == ("bfloat16", "64") else 12.0
            tiles = {"block_m": 64, "block_k": 32, "num_warps": 4, "num_stages": 3}
            timed = {**tiles, "us": fused_us, "rel_err": 1e-6, "x_floor": 2.0, "speedup": 10.0 / fused_us}
            rows = [timed, {**tiles, "block_m": 128, "error": "OutOfResources"}]
            case = {
                "tensors": (),
                "ref": None,
                "bytes": 1,
                "floor_us": 4.0,
                "unfused_us": 10.0,
                "configs": rows,
            }
            cases[dtype][batch] = tune_head._summarise(case)
    doc = {"kind": "fused_head", "device": "test", "bandwidth_Bps": 1e12, "default": {}, "cases": cases}
    doc["table"] = tune_head.wins_table(doc, "default_us")
    doc["table_best"] = tune_head.wins_table(doc, "best")
    return doc


def _production_doc(peak_mib: float) -> dict:
    run = {
        "peak_device_bytes": int(peak_mib * 2**20),
        "call_peak_bytes": 1000 * 2**20,
        "law_bytes": 400 * 2**20,
    }
    search = [
        {**run, "store": store, "peak_over_law": (peak_mib - 1000) / 400} for store in ("device", "host")
    ]
    calls = {n: {b: {"median_s": 0.1} for b in ("1", "4", "8")} for n in ("sd3", "flux")}
    del calls["flux"]["8"]  # cut before Flux's batch 8
    return {"kind": "production", "quick": False, "device": "cuda", "search": {"sd3": search}, "calls": calls}


def test_targets_read_device_shaped_files(tmp_path):
    """A run's files as the device writes them: each target passes or misses on its own figures."""
    g1, g16 = "sampler digits_dit B=1 K=1", "sampler latent_dit B=16 K=4"
    bench = {
        "benchmarks": [
            _bench_case(g1, "test_baseline_eager[digits_dit-B1-K1]", 3.0),
            _bench_case(g1, "test_cuda_graph[digits_dit-B1-K1-unfused]", 0.5, floor_s=0.45),
            _bench_case(g16, "test_baseline_eager[latent_dit-B16-K4]", 9.0),
            _bench_case(g16, "test_cuda_graph[latent_dit-B16-K4-unfused]", 4.0),
            _bench_case(g16, "test_cuda_graph[latent_dit-B16-K4-fused]", 3.0),
            _bench_case(g16, "test_compile_graph[latent_dit-B16-K4]", 3.5, compile_s=12.0),
        ]
    }
    fused = _fused_doc()
    assert fused["table"] == {"float32": {"1": False, "16": False, "64": False},
                              "bfloat16": {"1": False, "16": False, "64": True}}  # fmt: skip
    assert tune_head.python_table(fused["table"])["bfloat16"] == {1: False, 16: False, 64: True}
    assert "FUSED_HEAD_WINS = " in tune_head.markdown(fused)
    paths = []
    for name, doc in (
        ("bench.json", bench),
        ("fused_head.json", fused),
        ("production.json", _production_doc(1420)),
    ):
        (tmp_path / name).write_text(json.dumps(doc))
        paths.append(str(tmp_path / name))
    env = tmp_path / "env.txt"
    env.write_text("device: NVIDIA H100 80GB HBM3\n")
    bench_doc, extras, problems, kinds = check_targets.load_all(paths)
    text, ok = check_targets.report(bench_doc, env.read_text(), problems, extras, kinds)
    rows = [line.split(" | ")[:2] for line in text.splitlines() if line.startswith(("| PASS", "| MISS"))]

    def verdict(fragment: str) -> str:
        (found,) = [v.removeprefix("| ") for v, target in rows if fragment in target]
        return found

    assert not ok
    assert verdict("test_cuda_graph[digits_dit-B1-K1-unfused]: 6.0x eager") == "PASS"
    assert (
        verdict(
            "compile_graph: 3500.000 ms, 0.86x the faster plain graph (test_cuda_graph[latent_dit-B16-K4-f"
        )
        == "MISS"
    )
    assert verdict("fused head bfloat16 B=64: 1.25x unfused (>= 1.2x)") == "PASS"
    assert verdict("search memory SD3-1024 store device: (peak - one call) / law = 1.050") == "PASS"
    assert verdict("per-call times flux 1024^2: B1 100.0 ms, B4 100.0 ms (batch") == "MISS"  # no batch 8
    assert verdict("per-call times sd3") == "PASS"
    assert len(rows) == 8  # B=1: speedup and kernels; B=16; fused B=64; two stores; two models
    far = check_targets.production_targets([], _production_doc(1600), "")  # (1600 - 1000) / 400 = 1.5
    assert far is False


def test_production_configs_are_the_published_models():
    """The literal configs build diffusers' classes at the published sizes (SD3 Medium 2B, FLUX.1-dev 12B
    parameters), on the meta device (no memory); Flux's is the class default but for guidance_embeds."""
    diffusers = pytest.importorskip("diffusers")
    import inspect

    sizes = {}
    for cls, cfg in ((diffusers.SD3Transformer2DModel, production.SD3_MEDIUM),
                     (diffusers.FluxTransformer2DModel, production.FLUX_DEV)):  # fmt: skip
        with torch.device("meta"):
            sizes[cls.__name__] = sum(p.numel() for p in cls(**cfg).parameters())
    assert 2.0e9 < sizes["SD3Transformer2DModel"] < 2.1e9
    assert 11.8e9 < sizes["FluxTransformer2DModel"] < 12.0e9
    defaults = inspect.signature(diffusers.FluxTransformer2DModel.__init__).parameters
    assert {k for k, v in production.FLUX_DEV.items() if defaults[k].default != v} == {"guidance_embeds"}


def test_the_memory_law_is_the_docs_one():
    """docs/search_memory.md's SD3 / Flux row at M = 16, N = 101, batch 8, float32: 5.5 GiB device, 2.4 GiB
    on the device beside host or disk."""
    cfg = {"grid": 100, "samples": 16, "batch_size": 8}
    d = 16 * 128 * 128
    assert round(production.law_bytes("device", cfg, d, 4) / 2**30, 1) == 5.5
    assert (
        round(production.law_bytes("host", cfg, d, 4) / 2**30, 1)
        == 2.4
        == round(production.law_bytes("disk", cfg, d, 4) / 2**30, 1)
    )
