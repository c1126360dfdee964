# Two entry points, each self-sufficient on a fresh machine:
#   make test   ruff + the whole pytest suite
#   make demo   the main job (a short training run on the embedded synthetic data)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: test demo lint install clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch and torchvision first, as a matched pair, then the package with its extras.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e ".[dev,demo]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest lightning_losses tests

demo: $(STAMP)
	$(VENV)/bin/lightning-losses fit --config configs/retinanet.yaml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache wandb lightning_logs
