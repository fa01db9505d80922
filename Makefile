# Two entry points (README quick start): `make study` and `make test`. Each sets itself up.
# On CPU-only machines the install takes the CPU build of torch 2.13.0 through constraints/cpu.txt;
# elsewhere, `make setup CONSTRAINTS=` (or plain `pip install -e .`) keeps pip's usual torch choice.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
CONSTRAINTS ?= constraints/cpu.txt
EXTRAS ?= dev,hf
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export DO_NOT_TRACK ?= 1

.DEFAULT_GOAL := help
.PHONY: help setup study study-ci study-quick test browser params bench train-bench ablations sanity hf-cmr state-size clean-runs

# pip byte-compiles the installed packages (half of the install's 2.2 min). Not skipped with --no-compile: where
# PYTHONDONTWRITEBYTECODE is set (these machines), every process would then compile what it imports, ~10 s each.
## This list (the default goal): each target and the first line of what it does. The commands it installs (`dvc`, `cmr-repro`) live in
## .venv/bin: `source .venv/bin/activate` (or `export PATH=$PWD/.venv/bin:$PATH`) to call them in a shell.
help:
	@awk '/^## /{if (!doc) doc=substr($$0, 4); next} /^[a-z][a-z-]*:/{if (doc) printf "  make %-12s %s\n", substr($$1, 1, length($$1)-1), doc; doc=""; next} /^$$/{doc=""}' $(MAKEFILE_LIST)

setup: $(VENV)/.installed-$(EXTRAS)

$(VENV)/.installed-$(EXTRAS): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.$(if $(EXTRAS),[$(EXTRAS)])'
	touch $@

## The whole study on the default profile (params.yaml as committed). It needs none of the extras (tests, Optuna,
## submitit, transformers), so it installs without them: a shorter install, and Lightning, which imports
## transformers through torchmetrics wherever it is installed, starts faster in each of the 12 training processes.
study:
	$(MAKE) --no-print-directory setup EXTRAS=
	$(BIN)/python -m pipeline.compose --check  # DVC reads params.yaml, not conf/: an edit to conf/ must be composed first
	dvc repro

## The whole study on the tiny ci profile (a few minutes), as a DVC experiment in a temporary copy: the
## workspace (params.yaml, results/) keeps the study; the smoke test's report lands in experiments/study-ci/results/.
study-ci: setup
	$(call study_in_temp_copy,ci)

## A first look (~14 min on 2 cores): the default study's models and recipe, one seed, window/full/cmr and small
## evaluation sets (conf/profile/quick.yaml), run like study-ci; its report lands in experiments/study-quick/results/.
study-quick: setup
	$(call study_in_temp_copy,quick)

# $(1): a profile. `dvc exp run --temp` leaves the workspace as it is; the experiment's results/ are copied out of
# its git ref into experiments/study-$(1)/, where a reader opens them without `dvc exp apply`.
define study_in_temp_copy
dvc exp run --temp -S profile=$(1)
@ref=$$(git for-each-ref refs/exps --sort=-creatordate --count=1 --format='%(refname)'); \
rm -rf experiments/study-$(1) && mkdir -p experiments/study-$(1) && \
git archive "$$ref" results | tar -x -C experiments/study-$(1) && \
echo "the $(1) profile's report: experiments/study-$(1)/results/REPORT.md (and index.html); experiment $$ref"
endef

## The unit tests and the end-to-end ci-profile pipeline test (the dashboard opened in headless Chromium where
## it is installed: `make browser`; without it those tests skip and say so, with CMR_REQUIRE_BROWSER=1 they fail).
test: setup
	$(BIN)/python -m pytest -q

## Debian's Chromium and ChromeDriver for the browser tests (apt-get, as root or through sudo), unless installed.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q chromium chromium-driver >/dev/null; }; }

## Recompose params.yaml from conf/ (default profile).
params: setup
	$(BIN)/python -m pipeline.compose

## Forward-speed benchmark (results/speed_benchmark.csv) and where cmr's time goes against window
## (results/overhead_profile.csv). Run them on a quiet machine.
bench: setup
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/profile_overhead.py

## Training speed per memory at the study's shape (results/train_speed.{csv,md}): ms per step, tokens/s, counted
## FLOPs and the share of this machine's GEMM rate. On a quiet machine, never beside a training.
train-bench: setup
	$(BIN)/python benchmarks/train_speed.py

## CMR ablation sweeps (conf/experiment/ablation_*.yaml; ~6 min per job on 2 cores, 25 jobs), then
## results/ablations.{csv,md,png} from the latest run of each. `make ablations ABLATIONS="gate k"` for some.
ABLATIONS ?= capture k capacity selection mode gate bptt
ablations: setup
	dvc repro prepare
	for a in $(ABLATIONS); do $(BIN)/python -m pipeline.studies.sweep -m experiment=ablation_$$a || exit 1; done
	$(BIN)/python -m pipeline.studies.ablations --out results $$(for a in $(ABLATIONS); do ls -d multirun/ablation_$$a/*/ | tail -n 1; done)

## CMR inside a pretrained Hugging Face LM (conf/experiment/hf_cmr.yaml): a GPT-2 with a 256-token context pretrained
## on the training documents and saved with save_pretrained (HF_LM), then window (the bare LM) and cmr on it, recall
## evaluated, the memory's cost to the LM's text (perplexity), its own report in results/hf_cmr/; then the study's
## report shows its table.
HF := multirun/hf_cmr/params.yaml
# the stand-in: its context (the window the LM reads documents in), extra weight on the answers in its pretraining
# loss, and a LoRA adapter of this rank that trains with the memory (0: the LM frozen); docs/PIPELINE.md
HF_LM ?= --context 256 --answer-weight 1 --lora-rank 0
hf-cmr: setup
	dvc repro prepare
	mkdir -p multirun/hf_cmr
	$(BIN)/python -m pipeline.compose -o $(HF) experiment=hf_cmr
	$(BIN)/python -m pipeline.studies.hf_pretrain --params $(HF) $(HF_LM)
	for v in window cmr; do $(BIN)/cmr-repro train --variant $$v --params $(HF) && \
		$(BIN)/cmr-repro evaluate --variant $$v --params $(HF) || exit 1; done
	$(BIN)/cmr-repro report --params $(HF)
	$(BIN)/python -m pipeline.studies.hf_perplexity --params $(HF)
	cp $(HF) results/hf_cmr/params.yaml
	cp multirun/hf_cmr/lm/pretrain.json results/hf_cmr/pretrain.json
	dvc repro report

## Memories whose state size is a weight shape, trained at other sizes (seed 0; ~10 min on 2 cores for the two
## gdn sizes, side by side; add e.g. armt:d_key:16 rmt:mem_tokens:32) and read on the largest load: results/state_size/.
STATE_SIZES ?= gdn:d_key:16 gdn:d_key:64
state-size: setup
	dvc repro stress-data
	$(BIN)/python -m pipeline.studies.state_size $(STATE_SIZES)

## The implementation's sanity check (conf/experiment/sanity_recall.yaml: window, xl, cmr x 3 seeds on the
## regime where CMR is known to work; 9 jobs of 4,000 steps, 4-7 min each: ~50 min one after the other, ~25 with
## two or three multiruns side by side, README), then results/sanity/ from the latest run.
sanity: setup
	$(BIN)/python -m pipeline.studies.sweep -m experiment=sanity_recall
	$(BIN)/python -m pipeline.studies.sanity $$(ls -d multirun/sanity_recall/*/ | tail -n 1)
