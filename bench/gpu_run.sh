#!/usr/bin/env bash
# The GPU run in one command, in the working tree's root on a host whose python3 has CUDA
# torch and transformers (bench/gpu.py's docstring says what it measures):
#
#     bash bench/gpu_run.sh OUT_DIR [more bench/gpu.py arguments]
#
# Where the server's own dependencies are missing, it installs them from the wheels that
# `make gpu-wheels` put in bench/gpu-carry/wheels (copied along with the working tree),
# without an index; then it runs every stage. OUT_DIR gets gpu.json, gpu.png and gpu.log.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash bench/gpu_run.sh OUT_DIR [bench/gpu.py arguments]}
shift
python=${PYTHON:-python3}
wheels=bench/gpu-carry/wheels
mkdir -p "$out"
if ! "$python" -c "import fastapi, fastapi_offline, uvicorn, pydantic_settings, prometheus_client, httpx" 2>/dev/null; then
    if [ ! -d "$wheels" ]; then
        echo "the server's dependencies are missing and there is no $wheels: run 'make gpu-wheels' where PyPI" \
            "is reachable and copy bench/gpu-carry along with the working tree" >&2
        exit 2
    fi
    # Into python3's own environment where it may write there; else beside it, on PYTHONPATH.
    if ! "$python" -m pip install -q --no-index --find-links "$wheels" -r bench/gpu-requirements.txt; then
        "$python" -m pip install -q --no-index --find-links "$wheels" --target /tmp/judge-gpu-site \
            -r bench/gpu-requirements.txt
        export PYTHONPATH=/tmp/judge-gpu-site${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
export PYTHONUNBUFFERED=1
"$python" bench/gpu.py --device cuda --out "$out/gpu.json" "$@" 2>&1 | tee "$out/gpu.log"
