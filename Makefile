# ChatFlow developer entry points. `make install` is idempotent: it (re)installs only when the
# package metadata or the C++ sources changed since the last install.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chatflow-installed
# The CPU wheel of torch lies on local disk on CPU machines; on a GPU cluster, install your CUDA
# torch into the environment first and this pin is satisfied or can be overridden (TORCH_SPEC=torch).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test test-unit lint bench tokenizer-32k clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel pybind11
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo.sh

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The fast tier: in-process tests only (no subprocesses, no process groups).
test-unit: install
	$(PY) -m pytest -q -m unit $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/bench_preprocess.py
	$(PY) benchmarks/bench_big_record.py
	$(PY) benchmarks/bench_index.py
	$(PY) benchmarks/bench_dataset.py
	$(PY) benchmarks/bench_engine.py --layout single
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --nproc-per-node 2 benchmarks/bench_engine.py --layout tp2

# Regenerates the shipped LLaMA-style 32k-piece tokenizer (deterministic: same bytes every time).
tokenizer-32k: install
	mkdir -p build
	$(PY) examples/data/make_bilingual_corpus.py --output build/bilingual_corpus.jsonl --size-mb 30
	$(PY) tools/train_tokenizer.py --input build/bilingual_corpus.jsonl --vocab-size 32000 \
		--threads 1 --output examples/tokenizer/bilingual_32k.model
	rm -f examples/tokenizer/bilingual_32k.vocab

clean:
	rm -rf build demo_out *.egg-info chatflow/_C*.so
