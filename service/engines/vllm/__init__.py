"""The vLLM engine: label logprobs from vLLM, per-layer capture through a worker extension,
model families. May import ``service.engines`` and ``service.core``."""
