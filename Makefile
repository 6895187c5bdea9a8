# deepsight: `make all` runs the whole chain, `make test` the fast tests. Both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WS ?= workspace
# A local copy of the data set; empty means Keras's CIFAR-10 download (needs the internet).
DATA ?= $(wildcard ../shared/data/cifar10-jpeg)
# imagenet needs the internet; none trains from scratch; or a preset folder / run folder.
WEIGHTS ?= none
DEEPSIGHT := $(BIN)/deepsight --workspace $(WS)

# Training budget of `make all`: 3 epochs from scratch fit the 30-minute budget on 2 CPU cores.
EPOCHS ?= 3
TRAIN_FLAGS ?= --augment light
RUN ?= make-all

.PHONY: setup test test-browser test-full lint all obtain scrub explore train interpret report clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

test: setup
	$(BIN)/pytest -m "not slow and not browser" -q

test-browser: setup
	$(BIN)/pytest -m browser -q

test-full: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .

obtain: setup
	$(DEEPSIGHT) obtain $(if $(DATA),--source $(DATA) --name cifar10)

scrub: obtain
	$(DEEPSIGHT) scrub

explore: scrub
	$(DEEPSIGHT) explore

train: explore
	$(DEEPSIGHT) train --weights $(WEIGHTS) --epochs $(EPOCHS) --run-id $(RUN) --resume $(TRAIN_FLAGS)

interpret: train
	$(DEEPSIGHT) interpret $(RUN)

report: interpret
	$(DEEPSIGHT) report $(RUN)

all: report

clean:
	rm -rf $(WS) .pytest_cache .ruff_cache
