"""Scheduling: the one scheduler between the services and the engine (``scheduler``), with
online and batch work as two priorities of it; what it holds (``submission``: one entry per
task, one submission per request; ``kinds``: plain scores' and critiques' waiting and
running entries); what a pass may hold and how one is formed (``passes``); running a pass
(``execution``); when batch work may take the engine (``background``); the 429 admission
decision (``admission``); and the watchdog every pass runs through (``watchdog``).

May import ``service.engines``, ``service.core`` and ``service.observability``; not the
requests, the services or HTTP.
"""
