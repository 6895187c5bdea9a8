# deepsight: `make all` runs the whole chain, `make test` the fast tests. Both install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
WS ?= workspace
# A local copy of the data set; empty means Keras's CIFAR-10 download (needs the internet).
DATA ?= $(wildcard ../shared/data/cifar10-jpeg)
# imagenet needs the internet; none trains from scratch; or a preset folder / run folder.
WEIGHTS ?= none
DEEPSIGHT := $(BIN)/deepsight --workspace $(WS)

# Training budget of `make all`: the schedule is sized to BUDGET of wall time (the whole train
# command), so the chain ends in a known time on any machine. The recipe is what `deepsight
# train` does with no flags (airbench94's network and schedule, deepsight_tf/core/recipes.py);
# TRAIN_FLAGS override any of it, e.g. TRAIN_FLAGS='--config my-recipe.toml'.
BUDGET ?= 30m
TRAIN_FLAGS ?=
RUN ?= make-all

.PHONY: setup lock wheel-check bench-setup test test-browser test-full lint docs all obtain scrub explore train interpret report experiment clean

setup: $(VENV)/.installed

# The exact versions of requirements.lock, then deepsight itself without resolving anything
# again, so a fresh machine runs what the suite passed with; pip check proves the set whole.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r $(LOCK)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e '.[dev]'
	$(BIN)/pip check
	touch $@

# Resolve pyproject's ranges anew in a scratch environment and write what it got as the lock;
# then `make test` installs it into .venv and tests it.
lock:
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/pip install --quiet --upgrade pip setuptools
	$(VENV)-lock/bin/pip install --quiet -e '.[dev]'
	{ sed -n '/^#/p' $(LOCK); $(VENV)-lock/bin/pip freeze --all --exclude-editable | grep -v '^#'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(VENV)-lock

test: setup
	$(BIN)/pytest -m "not slow and not browser" -q --durations=15

test-browser: setup
	$(BIN)/pytest -m browser -q

# Build the wheel, install it with the locked dependencies into a fresh environment, and run
# the tiny chain from it: what a user who pip-installs deepsight gets.
WHEEL_DIR := build/wheel-check
wheel-check: setup
	rm -rf $(WHEEL_DIR)
	$(BIN)/pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation -w $(WHEEL_DIR) .
	$(PYTHON) -m venv $(WHEEL_DIR)/venv
	$(WHEEL_DIR)/venv/bin/pip install --quiet --disable-pip-version-check -r $(LOCK)
	$(WHEEL_DIR)/venv/bin/pip install --quiet --disable-pip-version-check --no-deps $(WHEEL_DIR)/deepsight-*.whl
	$(WHEEL_DIR)/venv/bin/pip check
	.ci/wheel_chain.sh $(WHEEL_DIR)/venv

# A separate environment for the benchmarks' peers (PyTorch, torchvision: several GB), so the
# locked test environment never carries them.
BENCH_VENV := .venv-bench
bench-setup: $(BENCH_VENV)/.installed
$(BENCH_VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check -r $(LOCK)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 cleanvision==0.3.7 airbench==0.1.8
	touch $@

test-full: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .

# The documentation site into site/, in strict mode: a broken link or anchor, or a CSV under
# docs/results/ that the results page does not show, fails it. docs/hooks.py generates the
# command reference from the settings, so it cannot fall behind the code.
docs: setup
	$(BIN)/python -m mkdocs build --strict

obtain: setup
	$(DEEPSIGHT) obtain $(if $(DATA),--source $(DATA) --name cifar10)

scrub: obtain
	$(DEEPSIGHT) scrub

explore: scrub
	$(DEEPSIGHT) explore

# --resume-or-start: a rerun of `make all` continues an interrupted run $(RUN), or starts it
# when there is none (plain --resume refuses a run id with no run: a typo never trains).
train: explore
	$(DEEPSIGHT) train --weights $(WEIGHTS) --budget $(BUDGET) --run-id $(RUN) --resume-or-start $(TRAIN_FLAGS)

interpret: train
	$(DEEPSIGHT) interpret $(RUN)

report: interpret
	$(DEEPSIGHT) report $(RUN)

all: report

# The seed's proposed interventions against a baseline on the default recipe, each arm (and a
# second baseline seed, the noise) a run of EXPERIMENT_BUDGET, so the whole takes about seven
# times that. The clean-labels arm reads an interpreted run's label issues:
# EXPERIMENT_ARMS=baseline,clean-labels EXPERIMENT_FLAGS+=" --issues-from RUN" (`make interpret`
# first). --resume-or-start: a rerun continues the experiment.
EXPERIMENT ?= seed-ideas
EXPERIMENT_ARMS ?= baseline,cutmix,mixup,focus-pairs,class-weights,resnet50
EXPERIMENT_BUDGET ?= 5m
EXPERIMENT_FLAGS ?=
experiment: explore
	$(DEEPSIGHT) experiment $(EXPERIMENT) --arms $(EXPERIMENT_ARMS) --budget $(EXPERIMENT_BUDGET) --weights $(WEIGHTS) --resume-or-start $(EXPERIMENT_FLAGS)

clean:
	rm -rf $(WS) site .pytest_cache .ruff_cache
