"""benchmarks/gpu/: the GPU device script must not rot between the rare runs on a CUDA machine.

The full guard is the stand-in (``benchmarks/gpu/simulate.sh``, run by ``.ci/run``); these are its fast parts:
the device's pytest options collect every GPU test without the packages the device lacks, a missing figure
file is a miss (not a crash), and the search figures detect the stores the installed search offers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import check_targets, search_figures

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
