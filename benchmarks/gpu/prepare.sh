#!/usr/bin/env bash
# Fill benchmarks/gpu/wheels/ (ignored by git) with what the production call needs and the device lacks; run
# here, where a registry is reachable, before a device command that carries that folder:
#
#   bash benchmarks/gpu/prepare.sh            # diffusers at the version installed here (the test extra's)
#   DIFFUSERS_VERSION=0.42.1 bash benchmarks/gpu/prepare.sh   # (also the default where none is installed)
#
# The device image (its package list: Python 3.12, torch, huggingface-hub 1.33, safetensors 0.8, regex,
# requests, filelock, numpy, pillow, zipp) has every requirement of diffusers 0.42 but diffusers itself and
# importlib_metadata (which diffusers lists but, on Python >= 3.8, does not import: it takes the standard
# library's). Both are pure-Python wheels (py3-none-any), so the download does not depend on this machine's
# Python. About 5 MiB; the device tree's limit is 64 MiB.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VERSION=${DIFFUSERS_VERSION:-$("$PY" -c "import importlib.metadata as m; print(m.version('diffusers'))" 2>/dev/null || echo 0.42.1)}
rm -rf wheels.tmp
mkdir wheels.tmp
"$PY" -m pip download -q --no-deps --only-binary=:all: -d wheels.tmp "diffusers==$VERSION" importlib_metadata
rm -rf wheels
mv wheels.tmp wheels
ls -l wheels
