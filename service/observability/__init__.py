"""Observability: the Prometheus metrics (``metrics``) and the logs (``logs``).

Imports nothing of ours: every layer may import it.
"""
