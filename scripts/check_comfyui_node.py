"""Check the "BOSS schedule" node in a real ComfyUI server, as a user meets it, and print one line per check.

    python scripts/check_comfyui_node.py --comfyui /tmp/comfyui --python /tmp/cvenv/bin/python

Needs a ComfyUI source tree and the Python environment that runs it, with boss_fast installed there
(docs/integrations.md#comfyui). Not part of the test suite: ComfyUI is not on the package registry.

In a scratch folder it writes the README's schedule set (``boss-fast schedule --model gmm2d_narrow --max-steps
8 --grid 50 --num-samples 32 --start scaled``) into ``models/boss_schedules`` and a local set (with its cost
table) into a subfolder and outside it, links the node pack into ``custom_nodes`` beside a probe node that
reports a ``SIGMAS`` tensor exactly (``tolist()`` of the float32 values; ComfyUI's PreviewAny rounds to 4
decimals), and starts ComfyUI on 127.0.0.1 only with that folder as ``--base-directory`` and another as its
working directory. Then, through ``/object_info`` and ``POST /prompt``: the node is registered with the
folder's files in its drop-down and the steps maximum the files give; placed with its defaults it runs on the
README's set; for every K its sigmas equal ``boss-fast sigmas --steps K --format json`` (as float32, bit for
bit) or both refuse; a relative name is read in the models folder, never in the server's working directory;
bad inputs are refused by name. The server is stopped at the end (or at ``--timeout``). Exit 1 if any check
failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

README_SET = ["--model", "gmm2d_narrow", "--max-steps", "8", "--grid", "50", "--num-samples", "32",
              "--start", "scaled"]  # fmt: skip
LOCAL_SET = ["--model", "gmm2d_narrow", "--objective", "local", "--max-steps", "4", "--grid", "20",
             "--num-samples", "16"]  # fmt: skip
PROBE = '''"""scripts/check_comfyui_node.py's probe: a SIGMAS tensor's dtype and exact values, as UI text."""
import json


class BossCheckExactSigmas:
    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "utils"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sigmas": ("SIGMAS",)}}

    def show(self, sigmas):
        return {"ui": {"sigmas": [json.dumps({"dtype": str(sigmas.dtype), "values": sigmas.tolist()})]}}


NODE_CLASS_MAPPINGS = {"BossCheckExactSigmas": BossCheckExactSigmas}
'''


class Server:
    """ComfyUI's HTTP API on 127.0.0.1:``port``: GET a JSON document, POST a prompt, wait for its history."""

    def __init__(self, port: int, deadline: float) -> None:
        self.base, self.deadline = f"http://127.0.0.1:{port}", deadline

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return json.load(response)

    def wait_up(self, proc: subprocess.Popen) -> None:
        while time.monotonic() < self.deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {proc.returncode} before serving")
            try:
                self.get("/object_info/BossSchedule")
                return
            except (OSError, ValueError):
                time.sleep(1.0)
        raise TimeoutError("ComfyUI did not serve /object_info/BossSchedule before the deadline")

    def run(self, inputs: dict) -> tuple[str, object]:
        """("refused", node_errors) at validation; ("error", message) or ("ok", sigmas) after running."""
        prompt = {
            "1": {"class_type": "BossSchedule", "inputs": inputs},
            "2": {"class_type": "BossCheckExactSigmas", "inputs": {"sigmas": ["1", 0]}},
        }
        body = json.dumps({"prompt": prompt, "client_id": "boss-fast-check"}).encode()
        request = urllib.request.Request(
            self.base + "/prompt", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                prompt_id = json.load(response)["prompt_id"]
        except urllib.error.HTTPError as err:
            return "refused", json.load(err)
        while time.monotonic() < self.deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"]["status_str"] != "success":
                    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
                    return "error", errors[0]["exception_message"] if errors else entry["status"]
                return "ok", json.loads(entry["outputs"]["2"]["sigmas"][0])
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish before the deadline")


def float32_bits(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


# ``boss-fast sigmas PATH --steps K --format json`` for each K, in one process (its main(), as the command
# runs it): {K: sigmas, or null when it refuses with exit 2}.
CLI_LOOP = """
import contextlib, io, json, sys
from boss_fast.cli import main
path, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
found = {}
for k in range(first, last + 1):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["sigmas", path, "--steps", str(k), "--format", "json"])
    assert code in (0, 2) and "Traceback" not in err.getvalue(), (k, code, err.getvalue())
    found[k] = json.loads(out.getvalue())["sigmas"] if code == 0 else None
print(json.dumps(found))
"""


def cli_sigmas(python: str, path: Path, last: int, cwd: Path) -> dict[int, bytes | None]:
    """``boss-fast sigmas PATH --steps K --format json`` for K = 1..last as float32 bytes (None: refused)."""
    argv = [python, "-c", CLI_LOOP, str(path), "1", str(last)]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"boss-fast sigmas {path}: {proc.stderr[-600:]}")
    found = json.loads(proc.stdout)
    return {int(k): None if v is None else float32_bits(v) for k, v in found.items()}


def node_bits(result: tuple[str, object]) -> bytes | None:
    """The node's float32 sigmas as bytes, None when refused (validation) or failed (execution)."""
    kind, value = result
    if kind != "ok":
        return None
    if value["dtype"] != "torch.float32":
        raise RuntimeError(f"SIGMAS of dtype {value['dtype']}, not torch.float32")
    return float32_bits(value["values"])


def prepare(root: Path, python: str) -> dict[str, Path]:
    """The scratch base directory: schedule files, the pack and the probe in custom_nodes, a decoy cwd."""
    folder, cwd, outside = root / "models" / "boss_schedules", root / "cwd", root / "outside"
    for path in (folder / "sub", cwd, outside, root / "custom_nodes" / "boss_check_probe"):
        path.mkdir(parents=True)
    files = {"readme": folder / "my_model.schedules.json", "local": outside / "local.json"}
    for argv, out in ((README_SET, files["readme"]), (LOCAL_SET, files["local"])):
        subprocess.run([python, "-m", "boss_fast.cli", "schedule", *argv, "--no-progress", "--out", str(out)],
                       check=True, cwd=cwd, capture_output=True, timeout=600)  # fmt: skip
    shutil.copyfile(files["local"], folder / "sub" / "local.json")
    shutil.copyfile(files["readme"], cwd / "elsewhere.json")  # only in the server's working directory
    pack = subprocess.run(
        [python, "-c", "import boss_fast.comfyui as c, os; print(os.path.dirname(c.__file__))"],
        check=True, capture_output=True, text=True, cwd=cwd,
    ).stdout.strip()  # fmt: skip
    os.symlink(pack, root / "custom_nodes" / "boss_fast")
    (root / "custom_nodes" / "boss_check_probe" / "__init__.py").write_text(PROBE)
    return {**files, "cwd": cwd}


def check_registered(server: Server, report) -> dict:
    """The node as ComfyUI lists it; returns a freshly placed node's inputs (drop-down first, defaults)."""
    info = server.get("/object_info/BossSchedule")["BossSchedule"]
    required = info["input"]["required"]
    options = required["schedule_file"][0]
    steps = required["steps"][1]
    report(options == ["my_model.schedules.json", "sub/local.json"], f"drop-down lists {options}")
    report(
        (steps["default"], steps["min"], steps["max"]) == (0, 0, 20),
        f"steps default {steps['default']}, range {steps['min']}..{steps['max']} (the local set's grid "
        "points - 1; the README's set gives 8)",
    )
    return {
        "schedule_file": options[0],
        "steps": steps["default"],
        "denoise": required["denoise"][1]["default"],
    }


def check_every_k(server: Server, python: str, files: dict[str, Path], report) -> None:
    """For each K: the node's float32 sigmas equal the CLI's bit for bit, or both refuse."""
    cases = (("my_model.schedules.json", files["readme"], 9), ("sub/local.json", files["local"], 21),
             (str(files["local"]), files["local"], 21))  # fmt: skip
    for name, path, last in cases:
        agree, ran = [], []
        cli = cli_sigmas(python, path, last, files["cwd"])
        for k in range(1, last + 1):
            node = node_bits(server.run({"schedule_file": name, "steps": k, "denoise": 1.0}))
            agree.append(node == cli[k])
            if node is not None:
                ran.append(k)
        report(
            all(agree),
            f"{name}: node == CLI (float32 bits) for K = 1..{last}: the node gave K = {_span(ran)}, "
            f"refused {_span([k for k in range(1, last + 1) if k not in ran])}; disagreed at "
            f"{_span([k for k, ok in zip(range(1, last + 1), agree, strict=True) if not ok])}",
        )


def check_inputs(server: Server, python: str, files: dict[str, Path], report) -> None:
    """File resolution and bad inputs, as ComfyUI converts and refuses them."""
    readme = "my_model.schedules.json"
    kind, errors = server.run({"schedule_file": "elsewhere.json", "steps": 0, "denoise": 1.0})
    report(kind == "refused" and "looked up in" in json.dumps(errors),
           f"a name only in the server's cwd: {kind}: {_first_error(errors)}")  # fmt: skip
    cli = cli_sigmas(python, files["readme"], 8, files["cwd"])
    got = node_bits(server.run({"schedule_file": readme, "steps": "3", "denoise": "1"}))
    report(got == cli[3], 'steps "3", denoise "1" (ComfyUI converts them): the CLI\'s K = 3')
    half = node_bits(server.run({"schedule_file": readme, "steps": 8, "denoise": "0.5"}))
    label = 'denoise "0.5": the last 4 steps of K = 8 (5 sigmas), as Align Your Steps'
    report(cli[8] is not None and half == cli[8][-20:], label)
    for inputs, expect, label in (
        ({"steps": None, "denoise": 1.0}, "refused", "steps None"),
        ({"steps": 9, "denoise": 1.0}, "refused", "steps 9 on the README's set (K = 1..8)"),
        ({"steps": 0, "denoise": None}, "refused", "denoise None"),
        ({"steps": 0, "denoise": "nan"}, "error", "denoise NaN"),
        ({"steps": 0, "denoise": 1.5}, "refused", "denoise 1.5"),
    ):
        kind, detail = server.run({"schedule_file": readme, **inputs})
        report(kind == expect, f"{label}: {kind}: {_first_error(detail)}")


def run_checks(server: Server, proc: subprocess.Popen, python: str, files: dict[str, Path], report) -> None:
    server.wait_up(proc)
    defaults = check_registered(server, report)
    got = node_bits(server.run(defaults))
    want = cli_sigmas(python, files["readme"], 8, files["cwd"])[8]
    report(got == want and got is not None, f"placed with its defaults {defaults}: the CLI's K = 8")
    check_every_k(server, python, files, report)
    check_inputs(server, python, files, report)


def _span(ks: list[int]) -> str:
    """[1..8] for a run of consecutive K, else the list; [] when empty."""
    if ks and ks == list(range(ks[0], ks[-1] + 1)) and len(ks) > 2:
        return f"[{ks[0]}..{ks[-1]}]"
    return str(ks)


def _first_error(detail: object) -> str:
    if isinstance(detail, str):
        return detail.strip()[:200]
    for node in (detail or {}).get("node_errors", {}).values():
        for error in node.get("errors", []):
            return f"{error.get('message')}: {error.get('details')}"[:200]
    return str(detail)[:200]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", default="/tmp/comfyui", help="the ComfyUI source tree (main.py)")
    parser.add_argument("--python", default="/tmp/cvenv/bin/python", help="the Python that runs ComfyUI")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole check")
    args = parser.parse_args()
    deadline = time.monotonic() + args.timeout
    failed = []

    def report(ok: bool, line: str) -> None:
        failed.extend([] if ok else [line])
        print(f"[{'ok ' if ok else 'BAD'}] {line}", flush=True)

    with tempfile.TemporaryDirectory(prefix="boss_comfyui_check_") as tmp:
        root = Path(tmp)
        files = prepare(root, args.python)
        command = [args.python, os.path.join(os.path.abspath(args.comfyui), "main.py"), "--cpu", "--listen",
                   "127.0.0.1", "--port", str(args.port), "--base-directory", str(root)]  # fmt: skip
        with open(root / "server.log", "w") as log:
            proc = subprocess.Popen(command, cwd=files["cwd"], stdout=log, stderr=subprocess.STDOUT)
        try:
            run_checks(Server(args.port, deadline), proc, args.python, files, report)
        except Exception as err:  # a check that cannot even run (the server died, a timeout) fails
            report(False, f"the check stopped: {type(err).__name__}: {err}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if failed:
                print((root / "server.log").read_text()[-3000:])
    print(f"{len(failed)} check(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
