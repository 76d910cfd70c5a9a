#!/usr/bin/env bash
# benchmarks/gpu.py on a lent GPU machine, from a bare checkout: see that script's docstring and docs/gpu.md.
#
#   device tool:  run(command="bash benchmarks/gpu.sh", timeout_s=540)
#   anywhere:     bash benchmarks/gpu.sh [--dry-run] [--sections ...]
#
# Python: $PYTHON, else the checkout's .venv if it imports inpaint, else python3. Wheels in .whl/ (carried,
# see docs/gpu.md) are installed to /tmp/site first. Where inpaint is not installed, the checkout is linked
# in as the package (pyproject's package-dir layout). The report goes to $OUT when it is set (the device
# tool returns the files there), else to reports/gpu.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c "import inpaint.core" 2>/dev/null; then
        python=.venv/bin/python
    else
        python=python3
    fi
fi

if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

if ! "$python" -c "import inpaint.core" 2>/dev/null; then
    shim=$(mktemp -d)
    mkdir "$shim/inpaint"
    for package in core trainer export serving client; do
        ln -s "$PWD/$package" "$shim/inpaint/$package"
    done
    export PYTHONPATH=$shim${PYTHONPATH:+:$PYTHONPATH}
fi

# CUDA and cuDNN installed by pip (the nvidia-* packages PyTorch's and TensorFlow's wheels bring) are not on
# the loader's path: onnxruntime-gpu's CUDA provider then fails ("libcublasLt.so.13: cannot open shared
# object file") and the run falls back to its CPU mode.
nvidia_libs=$("$python" -c '
import importlib.util, pathlib
spec = importlib.util.find_spec("nvidia")
roots = [pathlib.Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
print(":".join(sorted({str(so.parent) for root in roots for so in root.glob("**/lib/lib*.so*")})))
' 2>/dev/null || true)
if [ -n "$nvidia_libs" ]; then
    export LD_LIBRARY_PATH=$nvidia_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

PYTHONUNBUFFERED=1 exec "$python" benchmarks/gpu.py --out "${OUT:-reports/gpu}" "$@"
