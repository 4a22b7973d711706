"""LLM-as-a-judge scoring service: label distributions from a judge model over HTTP."""

__version__ = "0.1.0"
