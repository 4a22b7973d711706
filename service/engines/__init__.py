"""Engines: the model behind one protocol (``base.Engine``), built by ``factory``.

Owns the engine protocol and its errors, the factory that picks an engine, the readout heads,
the memory plan, the model store and the critique rule shared by both engines; ``transformers/``
and ``vllm/`` are the two implementations. May import ``service.core`` and ``service.config``;
nothing above it (scheduling, requests, serving, http) and no scoring maths.
"""
