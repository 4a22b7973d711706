"""The pure maths of judging: the method table (``readout``: what each scoring method reads
and how it forms its distribution), expected scores (``scoring``), LAGER's layer aggregation
(``lager``), calibration, the learned probe, ranking, pairwise comparison and review.

Imports nothing of ours but ``service.core``: no engine, no queue, no web framework.
"""
