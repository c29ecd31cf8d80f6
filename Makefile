# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
# Both install what they need, idempotently: Debian packages when root and missing, then the
# package in editable mode with its native build. Re-running skips what is already done.
PYTHON ?= python3
PIP = $(PYTHON) -m pip
SYS_PACKAGES = pkg-config liburing-dev libucx-dev ucx-utils fio libssl-dev
NATIVE_SOURCES = $(wildcard cpp/*.cpp include/dualkv/*.h src/dualkv/*.pyx src/dualkv/*/*.pyx)
PYTEST_ARGS ?=

.PHONY: demo test build sysdeps install clean venv-vllm test-vllm

demo: .stamp-install
	$(PYTHON) -m dualkv.cli demo

test: .stamp-install
	$(PYTHON) -m pytest -q $(PYTEST_ARGS) tests
	$(MAKE) test-vllm

# Rebuild the native parts in place after editing C++ or Cython.
build: .stamp-install
	$(PYTHON) setup.py -q build_ext --inplace

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

.stamp-install: setup.py pyproject.toml $(NATIVE_SOURCES) | sysdeps
	$(PIP) install -q "setuptools>=77" wheel "pybind11>=2.12" "Cython>=3.0" "numpy>=1.26"
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-build-isolation -e ".[test,plot]"
	$(PYTHON) setup.py -q build_ext --inplace
	@touch $@

clean:
	rm -rf build .stamp-* src/*.egg-info
	find src -name '*.so' -delete

# vLLM adapter: its own venv (vLLM pins CUDA packages and its own transformers range), built
# idempotently by scripts/venv_vllm.sh; the tests run there against this checkout's src/.
venv-vllm:
	@PYTHON=$(PYTHON) bash scripts/venv_vllm.sh

test-vllm: .stamp-install venv-vllm
	VLLM_TARGET_DEVICE=cpu .venvs/vllm/bin/python -m pytest -q $(PYTEST_ARGS) tests/integrations/test_vllm*.py
