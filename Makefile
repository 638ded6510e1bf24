# Every target creates .venv when it is missing; torch/torchvision are pinned in pyproject.toml.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint ablation clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline.demo --out demo-out

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
