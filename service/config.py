"""Service settings, read once from ``JUDGE_*`` environment variables or CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from judge_client.protocol import MAX_CRITERIA, MAX_RANK_CANDIDATES
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
# After the shutdown grace budget ends, closing the engine (vLLM's processes included) and
# exiting take at most this long. A pod's terminationGracePeriodSeconds must be its preStop
# delay + JUDGE_SHUTDOWN_GRACE_S + this (a test holds the manifests to it).
EXIT_MARGIN_S = 10


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "judge-service"


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "judge-service"


class Settings(BaseSettings):
    """Every knob of the service. Each field maps to ``JUDGE_<NAME>`` and ``--<name>``."""

    model_config = SettingsConfigDict(env_prefix="JUDGE_", extra="forbid")

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of the HTTP server.")
    model: str = Field(
        DEFAULT_MODEL,
        description=(
            "Judge model: the embedded default name, a local Hugging Face model directory, "
            "or a local .gguf file. Nothing is ever downloaded."
        ),
    )
    engine: Literal["auto", "transformers", "vllm"] = Field(
        "auto",
        description="Inference engine. 'auto' picks vLLM when installed and a GPU is present.",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Where GGUF models are converted, once, to safetensors directories.",
    )
    device: str = Field("auto", description="Torch device for the transformers engine.")
    max_items: int = Field(64, ge=1, description="Most items one request may carry.")
    max_queue: int = Field(1024, ge=1, description="Most items admitted (queued or running); more gets 429.")
    max_batch_tokens: int | None = Field(
        None,
        ge=1,
        description=(
            "Token budget of one transformers batch: the tokens its passes run, padding included (with the "
            "prefix cache, prefixes already kept cost nothing and a new shared prefix counts once; without "
            "it, a prefix the whole batch shares counts once). Default: 2048 on CPU (padded batches beyond "
            "~2k tokens run slower per item there), 16384 on GPU."
        ),
    )
    max_batch_size: int = Field(32, ge=1, description="Most items in one engine batch.")
    memory_limit_mb: int | None = Field(
        None,
        ge=256,
        description=(
            "The memory the server may use, in MiB: the pod's limits.memory (the manifests pass it in). "
            "Default: the cgroup's memory limit, else the machine's memory."
        ),
    )
    return_freed_memory: bool | None = Field(
        None,
        description=(
            "Have the allocator map every block of 1 MiB and more, so memory a pass frees goes back to the "
            "system at once and resident memory tracks what batches are planned to hold (glibc only). It "
            "costs forward-pass speed (20-28% on CPU passes of the default judge, measured). Default: on "
            "when a memory limit is known (memory_limit_mb or the cgroup's, as in a pod), off when the "
            "server may use the machine's whole memory."
        ),
    )
    max_batch_memory_mb: int | None = Field(
        None,
        ge=1,
        description=(
            "Transformers engine: memory one batch's forward passes may hold, in MiB. A batch is planned "
            "with every row's KV cache over the batch's full width (layers x 2 x kv heads x head dim x "
            "dtype bytes per token, from the model's config; a prefix the rows share is repeated in each), "
            "the computed tokens' activations, its rows through the LM head, and for labels of several "
            "tokens the label-trie node rows, each on a copy of its prompt's cache row (run in as many "
            "passes as the budget needs). Batches are formed within it; a prompt that alone needs more gets"
            " 422 before any work. Default: 90% of memory_limit_mb, less what the loaded model holds and "
            "less prefix_cache_mb (in the CPU pod, 4 GiB: 855 MiB for the default judge)."
        ),
    )
    max_wait_ms: float | None = Field(
        None,
        ge=0,
        description=(
            "How long a batch may wait for more items before it runs. "
            "Default: 2 for transformers, 0 for vLLM (it batches continuously)."
        ),
    )
    max_model_len: int | None = Field(
        None, ge=2, description="Longest prompt in tokens. Default: the model's own limit."
    )
    max_critique_tokens: int = Field(
        512, ge=1, description="Most tokens a request's critique may generate (critique.max_tokens)."
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body.")
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline of a request that names none.")
    max_request_timeout_s: float = Field(300.0, gt=0, description="Cap on the deadline a request may ask for.")
    shutdown_grace_s: float = Field(
        25.0,
        ge=0,
        description=(
            "The one shutdown budget: from SIGTERM, draining admitted work and closing connections "
            "together take at most this long."
        ),
    )
    load_timeout_s: float = Field(
        600.0,
        gt=0,
        description=(
            "Load deadline: while the model loads (and warms up), /health answers 200 for at most this "
            "long, then 503 and the process exits with status 1, so a hung load is restarted. The manifests"
            " set it below their startup probe's allowance."
        ),
    )
    stall_multiple: float = Field(
        10.0,
        ge=1,
        description=(
            "Watchdog: plain scores or critiques that make no progress for this many times their "
            "predicted time plus stall_floor_s marks the engine stalled: /health turns 503, every waiting "
            "request gets 503, and the process exits with status 1."
        ),
    )
    stall_floor_s: float = Field(
        30.0,
        gt=0,
        description=(
            "Watchdog: seconds added to every stall limit, so short passes are never judged; an engine that "
            "answered nothing for this long is sent a tiny probe pass."
        ),
    )
    layer_weights_file: Path | None = Field(
        None, description="JSON layer weights for method 'lager_weighted' (from fit-layers)."
    )
    calibration_file: Path | None = Field(
        None,
        description=(
            "Calibration JSON (from fit-calibration), loaded at startup: results of the setup it was fitted for "
            "gain 'calibrated', and its conformal threshold flags results for review."
        ),
    )
    probe_file: Path | None = Field(
        None, description="Probe JSON (from fit-probe), loaded at startup: serves method 'probe'."
    )
    chat_template_kwargs: str = Field(
        "enable_thinking",
        description="The keys a request's chat_template_kwargs may carry, comma-separated (empty: none).",
    )
    max_criteria: int = Field(
        8, ge=1, le=MAX_CRITERIA, description="Most criteria (rubrics) one score request may carry."
    )
    max_rank_candidates: int = Field(
        16, ge=2, le=MAX_RANK_CANDIDATES, description="Most candidates one rank request may carry."
    )
    review_min_confidence: float | None = Field(
        None, ge=0, le=1, description="Flag results for review whose confidence is below this (off by default)."
    )
    review_min_label_mass: float | None = Field(
        None, ge=0, le=1, description="Flag results for review whose label mass is below this (off by default)."
    )
    review_min_calibrated_probability: float | None = Field(
        None,
        ge=0,
        le=1,
        description=(
            "Calibrated results: flag them unless exactly one label reaches this calibrated probability. "
            "Default: the calibration file's conformal threshold."
        ),
    )
    lager_layer_norm: bool = Field(
        False,
        description="LAGER default: apply the final norm to each layer before the LM head (logit lens).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Model dtype. 'auto': float32 on CPU, the model's own (or bf16) on GPU."
    )
    prefix_reuse: bool = Field(
        True,
        description=(
            "Reuse shared prompt prefixes: the transformers engine keeps the KV caches of recent prompt "
            "prefixes across requests (see prefix_cache_mb); the vLLM engine turns on automatic prefix caching."
        ),
    )
    prefix_cache_mb: int = Field(
        1024,
        ge=0,
        description=(
            "Transformers engine: memory for the KV caches of prompt prefixes kept across requests, in MiB; "
            "least recently used prefixes go first. 0 keeps none (a prefix shared by a whole batch still runs once)."
        ),
    )
    cpu_packed_linear: bool = Field(
        True,
        description=(
            "Transformers engine on CPU: run the decoder's linear layers on weights reordered once for "
            "oneDNN's matmul kernels (what torch.compile's CPU backend and vLLM's CPU layers do), each "
            "layer proven equal to torch's own at load; float32 throughout, only the order of the sums "
            "differs (about 1e-6 relative). It keeps the plain weights too (some families read them), which"
            " costs the decoder's linear weights once more (0.4 GiB for the default judge). false keeps "
            "torch's path."
        ),
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="vLLM: share of GPU memory for weights and KV cache."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs each layer is split across.")
    max_num_seqs: int | None = Field(None, ge=1, description="vLLM: most sequences per engine step.")
    max_num_batched_tokens: int | None = Field(None, ge=1, description="vLLM: most tokens per engine step.")
    vllm_block_size: int | None = Field(
        None,
        ge=1,
        description=(
            "vLLM: tokens per KV-cache block. Prefix caching reuses whole blocks only, so smaller blocks reuse "
            "more of a shared prefix. Default: 32 on CPU (vLLM's own CPU default is 128), vLLM's own on GPU."
        ),
    )
    vllm_layers: bool = Field(
        True,
        description=(
            "vLLM: capture per-layer label logits for LAGER and return_layers in the same forward pass. "
            "Only the engine steps that hold such a request run eagerly (no torch.compile or CUDA graphs); "
            "false answers 422 to the per-layer methods."
        ),
    )
    cpu_kvcache_space_gb: float = Field(
        4.0, gt=0, description="vLLM on CPU: KV-cache memory in GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    cpu_reserved_cores: int = Field(
        0,
        ge=0,
        description=(
            "vLLM on CPU: cores kept from the model's threads for vLLM's scheduler and front end (passed as"
            " VLLM_CPU_NUM_OF_RESERVED_CPU). vLLM's own default keeps one core per worker; on 2 cores that "
            "halves the model's threads, and 0 runs the model about 1.9x faster there. On a host with many "
            "cores, 1 costs little."
        ),
    )
    api_keys: str | None = Field(
        None, description="Comma-separated bearer API keys. Auth is off only when no keys are configured."
    )
    api_keys_file: Path | None = Field(
        None,
        description=(
            "File with one API key per line (# comments allowed, indented or not), e.g. a mounted Secret. Set "
            "but unreadable or without a key: startup stops (exit status 1)."
        ),
    )
    metrics_auth: bool = Field(False, description="Require an API key on /metrics too.")
    playground: bool = Field(
        True,
        description=(
            "Serve the browser playground at /playground. The page itself is open, like /docs; "
            "every call it makes goes through the API with the API's own auth."
        ),
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the embedded job store (SQLite) keeps batch jobs and their files.",
    )
    jobs_database_url: SecretStr | None = Field(
        None,
        description=(
            "PostgreSQL URL (postgresql://user:password@host:5432/db) of the job store that several replicas share, "
            "files' bytes included; unset, each replica keeps its own SQLite file under JUDGE_DATA_DIR. A secret: "
            "never logged; set but unreachable at startup, startup stops (exit status 3)."
        ),
    )
    jobs_retention_hours: float = Field(
        168.0, gt=0, description="Batch jobs, their files and unused input files are deleted this long after they end."
    )
    jobs_max_file_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="Largest batch input file.")
    jobs_max_lines: int = Field(50_000, ge=1, description="Most requests one batch input file may hold.")
    jobs_chunk_items: int = Field(
        64, ge=1, description="Lines a worker leases at once (the unit redone after a crash)."
    )
    jobs_lease_s: float = Field(
        60.0, gt=0, description="A chunk's lease; a replica that stops renewing it loses the chunk after this long."
    )
    jobs_concurrency: int = Field(2, ge=1, description="Chunks one replica runs at once.")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="Log lines as JSON objects or plain text.")

    @property
    def chat_template_keys(self) -> list[str]:
        """The keys of ``chat_template_kwargs``, parsed."""
        return [key.strip() for key in self.chat_template_kwargs.split(",") if key.strip()]

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.max_items > self.max_queue:
            raise ValueError("max_items must not exceed max_queue")
        if self.request_timeout_s > self.max_request_timeout_s:
            raise ValueError("request_timeout_s must not exceed max_request_timeout_s")
        return self
