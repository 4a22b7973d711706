"""Scheduling: the queue that forms batches (``queue``), what a batch costs
(``batch_cost``), the 429 admission decision (``admission``), handing batches to the engine
(``submission``) and the watchdog that sees a stalled engine (``watchdog``).

May import ``service.engines``, ``service.core`` and ``service.observability``; not the
requests, the services or HTTP.
"""
