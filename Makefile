# The two commands a newcomer needs: `make test` and `make demo`.
# Both create the virtual environment in .venv once and reuse it while pyproject.toml is unchanged.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
DEMO_SERVE ?= 1
DEMO_DATA ?= synthetic
PYTEST_ARGS ?=

.PHONY: test test-fast demo setup lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[cpu,dev]"
	$(BIN)/python -c "import torch, torchvision.ops; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/chextriev demo --out $(DEMO_DIR) --data $(DEMO_DATA) $(if $(filter 0,$(DEMO_SERVE)),--no-serve,--serve)

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
