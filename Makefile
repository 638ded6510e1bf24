# Every target creates .venv when it is missing. pyproject.toml asks only lower bounds; constraints.txt
# pins the exact versions the tests and benchmarks run with.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint ablation clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m geo_ssl.pipeline.demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -m tests.bench.run_all --out bench-out

ablation: $(STAMP)
	$(BIN)/python -m tests.bench.ablation --out bench-out/ablation

lint: $(STAMP)
	$(BIN)/ruff check pipeline training schemas tests
	$(BIN)/ruff format --check pipeline training schemas tests

clean:
	rm -rf demo-out bench-out .pytest_cache
