# One-command set-up: every target creates .venv and installs kvraft with its dev extras if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: test lint run stress bench bench-quick clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# The whole suite, as CI runs it, on two pytest-xdist workers (most of the suite waits on
# real server processes, so two workers on two cores roughly halve its wall time; each
# worker reserves ports from a range of its own). `make test ARGS="-k test_basic_kvraft"`
# runs one test; `make test WORKERS=0` runs in one process.
WORKERS ?= 2
test: lint
	$(BIN)/pytest -q -n $(WORKERS) $(ARGS)

# Long or repeated suites, not in CI: everything marked stress, then the real-process
# Raft and key-value suites 10 times in a row (STRESS_ROUNDS=N to change).
STRESS_ROUNDS ?= 10
stress: $(STAMP)
	$(BIN)/pytest -q -m stress $(ARGS)
	for i in $$(seq $(STRESS_ROUNDS)); do \
	  echo "== stress round $$i of $(STRESS_ROUNDS)"; \
	  $(BIN)/pytest -q -m 'not stress' tests/cluster/test_raft.py tests/cluster/test_kvraft.py || exit 1; \
	done

# A local 3-node cluster in the foreground, data under ./data.
run: $(STAMP)
	$(BIN)/kvraft cluster --nodes 3 --data-dir ./data

# The standard benchmark set (fresh 3-node clusters, fsync on); results in benchmarks/results/.
bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/run.py $(ARGS)

# The regression guard: ~2 minutes side by side with etcd (../shared/bench-vs-etcd), the
# ratio table printed and kept in benchmarks/results/bench-quick.md; skipped (with a line
# saying so) where the kit is absent.
bench-quick: $(STAMP)
	benchmarks/bench_quick.sh

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
