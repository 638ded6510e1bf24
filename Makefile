# Every target creates .venv when it is missing. pyproject.toml asks only lower bounds; constraints.txt
# pins the exact versions the tests and benchmarks run with.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# MosaicML streaming and litdata, for bench_loader_latency's peer rows: a venv of their own, since they pin
# numpy 2.1 and pull cloud clients the tests do not need
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed

.PHONY: venv demo test docs bench bench-peers lint ablation clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# --no-compile: byte-compiling every installed file (torch's included) doubled the install, 2 min 34 s
	# against 1 min 17 s (2026-12-06); Python compiles what is imported, once, on first use (in a fresh
	# clone, make test took 15 min 22 s with it and 15 min 53 s without)
	$(BIN)/pip install -q --no-compile -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# the venv alone (what `make test` and `make demo` create first)
venv: $(STAMP)

# one torch thread: on 2 cores the demo's small convolutions ran 3x the CPU time with two (BENCHMARKS.md)
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m geo_ssl.pipeline.demo --out demo-out

# the suite without the docs pages (make docs runs those), on two pytest-xdist workers: most tests wait on
# subprocesses that import torch, so two workers on 2 cores took 11 min 33 s where one took 17 min 11 s
# (2026-12-06)
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 -m "not docs" tests

# every shell and Python block of README.md and of the docs pages, run as written in nav order with their
# shown output compared (tests/docs), then the site (mkdocs.yml, docs/) into site/ with --strict: a broken
# link or anchor fails the build
docs: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m docs tests/docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(BIN)/python -m tests.bench.run_all --out bench-out

$(PEERS_STAMP): pyproject.toml constraints.txt
	test -x $(PEERS_VENV)/bin/python || $(PY) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q --upgrade pip
	$(PEERS_VENV)/bin/pip install -q -c constraints.txt -e . psutil mosaicml-streaming==0.13.0 litdata==0.2.76
	touch $(PEERS_STAMP)

bench-peers: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python -m tests.bench.bench_loader_latency --out bench-out/loader_latency

ablation: $(STAMP)
	$(BIN)/python -m tests.bench.ablation --out bench-out/ablation

lint: $(STAMP)
	$(BIN)/ruff check pipeline training schemas tests
	$(BIN)/ruff format --check pipeline training schemas tests

clean:
	rm -rf demo-out bench-out site .pytest_cache
