"""The transformers engine: batched forward passes, the KV prefix cache, greedy generation,
per-layer probes and CPU packed linears. May import ``service.engines`` and ``service.core``."""
