# ftstudy developer entry points. Every target says what it does.
#   make venv   create/refresh .venv from requirements.txt + constraints.txt (+ editable ftstudy)
#   make test   run the test suite in .venv (prints wall time)
#   make demo   run `python -m ftstudy.demo` in .venv
#   make notebooks  execute notebooks/*.ipynb against results/ and save them with outputs (figures to results/figures/)
#   make benchmark  the comparison on the CPU-scale suite: baseline, matched baseline, Free κ ∈ {1/4,1/2,1},
#                   3 seeds, lm-eval, pooled report (about 2 h on 2 cores; resumable; BENCH_ARGS=--dry-run prices it)
#   make benchmark-code-math  the comparison on real code and math: code-math corpus, real-code/math tasks (hours on 2 cores)
#   make gpu-check  the device check on a GPU machine with its own python3/torch (8 minutes; results/gpu/<gpu>/)
#   make gpu-study  the kappa = 1/8 question at the gpu-mid rung, 10 seeds, compiled steps, both protocols (one GPU)
#   make gpu-decide the decision benchmark's comparison at 10 seeds on one GPU (results/gpu/<gpu>/benchmarks/decide/)
#   make gpu-wheels download the wheels gpu-check and gpu-decide bring to a machine without them (.wheels/)
#   make lock   regenerate constraints.txt from a fresh venv
#   make clean  remove .venv and build/test caches

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

# Interpreter for new venvs: python3.11, else python3 (resolved to a real path, so a pyenv shim
# for a missing version does not count).
PYTHON ?= $(shell python3.11 -c 'import sys; print(sys.executable)' 2>/dev/null || python3 -c 'import sys; print(sys.executable)')

VENV      := .venv
VPY       := $(VENV)/bin/python
STAMP     := $(VENV)/.ftstudy-stamp
LOCK_VENV := .lock-venv
# Files whose content defines the environment; their sha256 is kept in $(STAMP).
ENV_FILES := requirements.txt constraints.txt pyproject.toml
PIP_FLAGS := --progress-bar off

# Environment for test and demo runs: deterministic hashing, no hub access, quiet tokenizers.
RUN_ENV := PYTHONHASHSEED=0 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# Parallel tests only when pytest-xdist is a declared requirement. --dist loadgroup keeps the
# tests marked xdist_group("inductor") on one worker: torch.compile's first use costs each
# process about 20 s on a cold cache.
XDIST := $(if $(shell grep -Eiq '^pytest[-_.]xdist[[:space:]]*==' requirements.txt && echo yes),-n 2 --dist loadgroup,)

.PHONY: venv test demo notebooks benchmark benchmark-code-math lock clean gpu-check gpu-study gpu-decide gpu-wheels

# make benchmark: the seeds (BENCH_SEEDS="0 1 2 3 4" for five) and extra options (BENCH_ARGS="--dry-run").
BENCH_SEEDS ?= 0 1 2
BENCH_ARGS  ?=
# make benchmark-code-math: seeds and the tasks compared (CODEMATH_SEEDS="0 1" for two seeds).
CODEMATH_SEEDS ?= 0
CODEMATH_TASKS ?= ftstudy_arithmetic ftstudy_gsm ftstudy_humaneval ftstudy_humaneval_bpb
CODEMATH_RUNS  := results/benchmarks/code-math-small/runs/kl_budget/code-math-small

venv:
	@want=$$(sha256sum $(ENV_FILES) | sha256sum | cut -d' ' -f1); \
	if [ -x $(VPY) ] && [ -f $(STAMP) ] && [ "$$(cat $(STAMP))" = "$$want" ]; then \
	  echo "==> $(VENV) is up to date (stamp $$want)"; exit 0; \
	fi; \
	if [ -x $(VPY) ] && $(VPY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  echo "==> $(VENV) is stale (content of $(ENV_FILES) changed): updating it"; \
	else \
	  echo "==> creating $(VENV) with $(PYTHON)"; \
	  rm -rf $(VENV); \
	  $(PYTHON) -m venv $(VENV); \
	fi; \
	rm -f $(STAMP); \
	echo "==> pip install -r requirements.txt -c constraints.txt"; \
	$(VPY) -m pip install $(PIP_FLAGS) -r requirements.txt -c constraints.txt; \
	echo "==> pip install --no-deps -e ."; \
	$(VPY) -m pip install $(PIP_FLAGS) --no-deps -e .; \
	echo "$$want" > $(STAMP); \
	echo "==> $(VENV) ready (stamp $$want)"

test: venv
	@echo "==> $(RUN_ENV) $(VPY) -m pytest -q $(XDIST)"
	@start=$$(date +%s%N); rc=0; \
	$(RUN_ENV) $(VPY) -m pytest -q $(XDIST) || rc=$$?; \
	ms=$$(( ($$(date +%s%N) - start) / 1000000 )); \
	printf '==> pytest exit code %s, wall time %d.%03ds\n' "$$rc" $$((ms / 1000)) $$((ms % 1000)); \
	exit $$rc

demo: venv
	@echo "==> $(RUN_ENV) $(VPY) -m ftstudy.demo $(DEMO_ARGS)"
	@start=$$(date +%s); $(RUN_ENV) $(VPY) -m ftstudy.demo $(DEMO_ARGS); \
	echo "==> demo wall time (after the venv step) $$(( $$(date +%s) - start )) s"

# The device check runs on the GPU machine's own python3 (its torch and Lightning), not .venv:
# what it lacks of the performance suite's peer comes from .wheels/ (make gpu-wheels, anywhere
# with pip). GPU_CHECK_ARGS="--budget-min 8" etc.
GPU_PYTHON ?= python3

gpu-check:
	PYTHONPATH=$(CURDIR) PYTHONUNBUFFERED=1 $(RUN_ENV) $(GPU_PYTHON) -m ftstudy.gpucheck \
	  $(if $(wildcard .wheels/*.whl),--wheels .wheels) $(GPU_CHECK_ARGS)

# The κ = 1/8 study at the gpu-mid rung: baseline, κ = 1/64, 1/8, 1 with 10 seeds each, compiled
# steps, measured under protocols t1 and paper; results under results/gpu/<gpu>/ablate/gpu-mid/.
# Resumable: a second call finishes what the first left. Price it first with GPU_STUDY_ARGS=--dry-run.
GPU_STUDY = --study kl_budget --preset gpu-mid --device cuda --seeds 0 1 2 3 4 5 6 7 8 9 \
  --only latent_bits=0 kappa_bits=1/64 kappa_bits=1/8 kappa_bits=1 --set compile=true --measure t1 paper
gpu-study:
	PYTHONPATH=$(CURDIR) PYTHONUNBUFFERED=1 $(RUN_ENV) $(GPU_PYTHON) -m ftstudy.ablate $(GPU_STUDY) $(GPU_STUDY_ARGS)

# The decision benchmark's comparison on one GPU at 10 seeds (five models, 3,000 steps each,
# compiled steps), evaluated there; results under results/gpu/<gpu>/benchmarks/decide/.
# lm-eval and what it needs beyond the GPU image come from .wheels/ (make gpu-wheels).
# Resumable. Price it first with GPU_DECIDE_ARGS=--dry-run.
GPU_SITE ?= /tmp/ftstudy-gpu-site
GPU_DECIDE = --device cuda --seeds 0 1 2 3 4 5 6 7 8 9 --jobs 16 --set compile=true
gpu-decide:
	$(if $(wildcard .wheels/*.whl),$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --upgrade \
	  --target $(GPU_SITE) .wheels/*.whl)
	PYTHONPATH=$(CURDIR):$(GPU_SITE) PYTHONUNBUFFERED=1 $(RUN_ENV) $(GPU_PYTHON) -m ftstudy.eval.decide \
	  $(GPU_DECIDE) $(GPU_DECIDE_ARGS)

gpu-wheels: venv
	$(VPY) -m ftstudy.gpucheck --download-wheels .wheels

notebooks: venv
	$(RUN_ENV) $(VPY) -m ftstudy.notebooks run --inplace

benchmark: venv
	$(RUN_ENV) $(VPY) -m ftstudy.benchmark --seeds $(BENCH_SEEDS) --jobs 2 $(BENCH_ARGS)

benchmark-code-math: venv
	$(RUN_ENV) $(VPY) -m ftstudy.data prepare --corpus code-math --out data/code-math --val-percent 2
	$(RUN_ENV) $(VPY) -m ftstudy.ablate --study kl_budget --preset code-math --seeds $(CODEMATH_SEEDS) --jobs 2 \
	  --only latent_bits=0 kappa_bits=1/4 kappa_bits=1/2 kappa_bits=1 kappa_bits=2
	for s in $(CODEMATH_SEEDS); do \
	  $(RUN_ENV) $(VPY) -m ftstudy.evaluate --confirm-run-unsafe-code --tasks $(CODEMATH_TASKS) --out results/benchmarks/code-math-small/s$$s \
	    --checkpoints $(CODEMATH_RUNS)-base-s$$s $(CODEMATH_RUNS)-free-k0.25-s$$s $(CODEMATH_RUNS)-free-k0.5-s$$s \
	      $(CODEMATH_RUNS)-free-k1-s$$s $(CODEMATH_RUNS)-free-k2-s$$s; \
	done

lock:
	@echo "==> regenerating constraints.txt: fresh $(LOCK_VENV) with $(PYTHON), resolve requirements.txt, pip freeze"
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install $(PIP_FLAGS) -r requirements.txt
	{ sed -n '/^#/p;/^#/!q' constraints.txt 2>/dev/null; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable \
	    | sed -E 's/^([^=]+==[^+]+)\+.*$$/\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(LOCK_VENV)
	@echo "==> constraints.txt regenerated ($$(grep -vc '^#' constraints.txt) pins); run 'make venv' to apply"

clean:
	@echo "==> removing $(VENV), $(LOCK_VENV), build artefacts and caches"
	rm -rf $(VENV) $(LOCK_VENV) build dist *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
