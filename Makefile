# Every target creates or reuses .venv and installs what it needs; only python3 + pip assumed.
# Versions come from constraints.lock (what CI tested); pyproject.toml keeps lower bounds.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := constraints.lock
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
SCALE ?= default
# uv pip compile: one universal lock of every extra, used as pip constraints.
COMPILE = $(BIN)/uv pip compile pyproject.toml --extra test --extra dev --extra bench \
	--universal --python-version 3.11 --no-header --quiet -o $(LOCK)

.PHONY: demo test soak lint bench install clean lock upgrade-deps image-test

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[test,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# `make demo PORT=8081` when 8080 is taken (PORTFOLIO_SYNC_PORT works too).
demo: $(STAMP)
	$(BIN)/portfolio-sync demo --dir demo --serve $(if $(PORT),--port $(PORT))

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Thousands of randomized histories per matrix (tests/integration/test_histories.py).
HISTORIES ?= 3000
soak: $(STAMP)
	PORTFOLIO_SYNC_TEST_HISTORIES=$(HISTORIES) $(BIN)/python -m pytest -q -s -p no:timeout tests/integration/test_histories.py

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -c "import matplotlib" 2>/dev/null || $(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[bench]'
	@command -v rclone >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ apt-get install -y -qq rclone >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq rclone >/dev/null 2>&1; }; }; } || \
		echo "rclone is not available: the benchmark skips its column"
	$(BIN)/python bench/run.py --scale $(SCALE)

# Build the container image with podman (no Docker daemon needed) and smoke-test it: serve,
# worker, setup, sync on SQLite and on the local PostgreSQL. Root only; see .ci/image-test.
image-test:
	.ci/image-test

# After editing dependencies in pyproject.toml: re-lock, keeping every other pin as it is.
lock: $(STAMP)
	$(COMPILE)

# Move every pin to the newest release allowed by pyproject.toml, install it, run the suite.
upgrade-deps: $(STAMP)
	$(COMPILE) --upgrade
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[test,dev]'
	$(MAKE) lint test

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache
