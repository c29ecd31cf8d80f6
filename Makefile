# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
# Both install what they need, idempotently: Debian packages when root and missing, then the
# package in editable mode with its native build. Re-running skips what is already done.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
SYS_PACKAGES = pkg-config liburing-dev libucx-dev ucx-utils fio libssl-dev
# A .py with a .pxd beside it is compiled too (setup.py), so both are build inputs: a stale
# extension would shadow an edited .py.
COMPILED_PXD = $(wildcard src/dualkv/*/*.pxd)
NATIVE_SOURCES = $(wildcard cpp/*/*.cpp cpp/*/*.h include/dualkv/*.h src/dualkv/*.pyx \
	src/dualkv/*/*.pyx) \
	$(COMPILED_PXD) $(wildcard $(COMPILED_PXD:.pxd=.py))
PYTEST_ARGS ?=

# Framework venvs live outside the checkout (scripts/venv.sh), shared by every clone here.
DUALKV_VENVS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/dualkv/venvs
export DUALKV_VENVS

.PHONY: demo test test-sglang test-vllm gpu-check build sysdeps clean

# PYTHONPATH: this checkout's src/ even where another clone on the machine was installed in
# editable mode after it (the editable install points at whichever clone ran it last).
demo: build
	PYTHONPATH=$(CURDIR)/src $(PYTHON) -m dualkv.cli demo

test: build
	PYTHONPATH=$(CURDIR)/src $(PYTHON) -m pytest -q $(PYTEST_ARGS) tests
	$(MAKE) --no-print-directory test-sglang
	$(MAKE) --no-print-directory test-vllm

# The framework adapters, tested inside the real frameworks. Each framework pins its own
# dependencies (CUDA builds, clashing transformers ranges), so each runs in its own venv
# (scripts/venv.sh); dualkv comes from this checkout's src/ with the _C built above.
test-sglang: build
	scripts/venv.sh sglang
	PYTHONPATH=$(CURDIR)/src $(DUALKV_VENVS)/sglang/bin/python -m pytest -q $(PYTEST_ARGS) tests/integrations/test_sglang*.py

test-vllm: build
	scripts/venv.sh vllm
	PYTHONPATH=$(CURDIR)/src VLLM_TARGET_DEVICE=cpu $(DUALKV_VENVS)/vllm/bin/python -m pytest -q $(PYTEST_ARGS) tests/integrations/test_vllm*.py

# On a CUDA machine: the GPU-marked tests and a host<->device bench of the registered pool
# through the traffic manager against torch's pinned copy, as JSON. Without a CUDA device it
# says so and fails (status 2): nothing was checked.
gpu-check: build
	PYTHONPATH=$(CURDIR)/src $(PYTHON) -m dualkv.bench.gpu_check

# The native parts (C++ core and Cython), rebuilt in place and incrementally when they change.
BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
build: .stamp-build

# -j: the Cython modules are separate extensions, built side by side (3m49s from scratch on
# the 2-core machine; the C++ module's own sources compile in parallel either way).
.stamp-build: .stamp-install $(NATIVE_SOURCES)
	$(PYTHON) setup.py -q build_ext --inplace -j $(BUILD_JOBS)
	@touch $@

sysdeps:
	@missing=""; for p in $(SYS_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
	  echo "WARNING: missing system packages:$$missing"; \
	  echo "  install them with: sudo apt-get install$$missing"; \
	  echo "  (dualkv still builds; backends without their library are left out, see 'dualkv info')"; \
	fi

# Python dependencies and the package in editable mode (metadata only: `build` compiles).
# torch is pinned to the CPU build that lies on disk (a plain `torch` would pull CUDA wheels),
# but only where no CUDA build of torch is installed: on a GPU machine the installed CUDA torch
# is kept, so the GPU-marked tests run instead of skipping.
# .[ucx]: UCX 1.22 from the libucx-cu12 wheel, loaded before the system UCX (1.13 has no
# zero-copy put over TCP; README, "UCX over TCP").
.stamp-install: setup.py pyproject.toml | sysdeps
	$(PIP) install -q "setuptools>=77" wheel "pybind11>=2.12" "Cython>=3.0" "numpy>=1.26"
	$(PYTHON) scripts/install_torch.py
	DUALKV_SKIP_NATIVE=1 $(PIP) install -q --no-build-isolation -e ".[test,plot,ucx]"
	@touch $@

clean:
	rm -rf build .stamp-* src/*.egg-info
	find src -name '*.so' -delete
