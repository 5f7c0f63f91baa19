# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Both build .venv through the idempotent `make setup`.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= out/demo

.PHONY: setup demo test lint browser bench notebooks clean

setup: $(STAMP)

# torch first, on its own, so that the project's `torch>=...` requirement installs nothing more.
# CPU-only machine: TORCH_PIP_ARGS can name a CPU wheel index; this workplace's pip already finds the
# CPU build of torch 2.13.0 on disk. Machine with an NVIDIA driver: the default (CUDA) build.
TORCH_PIP_ARGS ?=
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "setup: NVIDIA GPU found: CUDA build of torch"; \
	else \
		echo "setup: no GPU: CPU build of torch"; \
	fi
	$(PY) -m pip install -q --no-compile "torch==2.13.0" $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q --no-compile -e ".[test]"
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/codetransfer run tiny --out $(OUT)

# Execute notebooks/*.ipynb in place against out/demo (run `make demo` first), to commit them with outputs.
notebooks: setup
	$(PY) bench/execute_notebooks.py

# The report's browser check (tests/report_browser.py) drives Debian's chromium through chromium-driver.
# Installed here when missing (root + apt-get only); elsewhere that one check is skipped. Not part of `demo`.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "test: installing Debian's chromium and chromium-driver for the report's browser check"; \
		log=$$( (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) 2>&1 ) \
			|| { echo "$$log" | tail -n 20; echo "test: installing chromium failed"; exit 1; }; \
	else \
		echo "test: chromium not found and not installable here (needs root and apt-get): the report's browser check will be skipped"; \
	fi

# Two pytest-xdist workers, each test file whole on one of them (a file's trained fixtures are built once), one
# torch thread each: the heavy tests train with one thread per run, so two workers keep two cores busy.
# TEST_WORKERS=1 runs the suite in one process (plain `pytest` does too).
TEST_WORKERS ?= 2
test: setup browser lint
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

# ruff (configured in pyproject.toml): lint, and the formatter's check (`ruff format .` fixes it)
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup
	$(PY) bench/train_throughput.py

clean:
	rm -rf $(VENV) out
