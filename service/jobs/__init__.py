"""Batch jobs: the OpenAI Batch API's files and batches, durable in a store, run by a
worker through the serving layer, at the scheduler's batch priority.

Owns the batches service (``batches``: the ``/v1/files`` and ``/v1/batches`` endpoints'
work), the store (``store`` defines it, ``sql`` writes it in portable SQL, ``sqlite`` and
``postgres`` implement it, ``backend`` picks one from the settings), the input file's
validation (``lines``) and the worker (``worker``). May import
``service.serving`` (a line is answered by its endpoint's service), ``service.requests``,
``service.scheduling``, ``service.core``, ``service.observability`` and ``service.config``;
nothing of ours imports it but HTTP and the app.
"""
