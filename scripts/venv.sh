#!/usr/bin/env bash
# Creates (or checks) the virtual environment of one framework integration: $DUALKV_VENVS/<name>
# (default ~/.cache/dualkv/venvs, outside the checkout, so a fresh clone on the same machine,
# as in CI, reuses it; the stamp below rebuilds it whenever its pins change).
#   scripts/venv.sh sglang        # idempotent: a no-op when the stamp matches
#   scripts/venv.sh peers         # NIXL and Mooncake Transfer Engine for `dualkv bench transfer`
# Frameworks pin CUDA builds and clashing `transformers` ranges, so each gets its own venv made
# from the same python3 as the main build: torch pinned to the CPU wheel by
# scripts/venv/constraints.txt, the framework itself with --no-deps, then a light list of what
# its import path needs (shared/notes/frameworks-on-cpu.md).
# dualkv itself is not installed there: the tests and the bench run with PYTHONPATH=<repo>/src
# and use the dualkv._C that the main build put in src/ (same interpreter, so the same ABI),
# so there is no second native compile and nothing in the venv to go stale after an edit.
set -euo pipefail

name="${1:-}"
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
specs="$here/venv"
case "$name" in
  sglang) import_check="from dualkv.testing.sglang_cpu import import_sglang_storage; import_sglang_storage()" ;;
  vllm) import_check="import vllm; from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1; from vllm.v1.core.sched.scheduler import Scheduler" ;;
  peers) import_check="import nixl_cu12._api, mooncake.engine" ;;
  *) echo "usage: scripts/venv.sh sglang|vllm|peers   (unknown venv: '${name}')" >&2; exit 2 ;;
esac

if ! python="$(${PYTHON:-python3} -c 'import sys; print(sys.executable)')"; then
  echo "venv $name: FAILED: cannot run the interpreter '${PYTHON:-python3}'" >&2; exit 1
fi
venvs="${DUALKV_VENVS:-${XDG_CACHE_HOME:-$HOME/.cache}/dualkv/venvs}"
venv="$venvs/$name"
stamp="$venv/.dualkv-stamp"
log="$venvs/$name.log"
want="$( { "$python" --version; cat "$specs/constraints.txt" "$specs/$name"*.txt; } | sha256sum | cut -c1-16)"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c '' 2>/dev/null; then
  exit 0
fi

mkdir -p "$venvs"
: > "$log"
step() {  # step "what it does" command...: runs it, and on failure says what failed and why
  local what="$1"; shift
  echo "venv $name: $what"
  if ! "$@" >>"$log" 2>&1; then
    echo "venv $name: FAILED: $what" >&2
    echo "  command: $*" >&2
    echo "  last lines of $log:" >&2
    tail -n 15 "$log" | sed 's/^/    /' >&2
    exit 1
  fi
}

if ! "$venv/bin/python" -c '' 2>/dev/null; then
  step "create $venv with $python" "$python" -m venv --clear "$venv"
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
step "install torch==2.13.0 (CPU build)" "${pip[@]}" -c "$specs/constraints.txt" torch==2.13.0
step "install $(grep -v '^#' "$specs/$name-nodeps.txt" | xargs) without dependencies" \
  "${pip[@]}" --no-deps -r "$specs/$name-nodeps.txt"
step "install the light dependency list $specs/$name.txt" \
  "${pip[@]}" -c "$specs/constraints.txt" -r "$specs/$name.txt"
step "check torch is still the CPU 2.13.0 build" "$venv/bin/python" -c \
  "import torch, sys; v = torch.__version__; print(v); sys.exit(not v.startswith('2.13.0') or torch.version.cuda is not None)"
step "check that $name's classes import" env PYTHONPATH="$repo/src" VLLM_TARGET_DEVICE=cpu \
  "$venv/bin/python" -c "$import_check"
echo "$want" > "$stamp"
echo "venv $name: ready ($venv)"
