"""Offline evaluation: correlations against human scores (``evaluation``) and bootstrap
intervals (``intervals``), for the ``fit`` and ``eval`` commands and the benchmarks.

May import ``service.methods`` and ``service.core``; nothing of the server.
"""
