"""HTTP: the FastAPI routes (score, compare, rank, batches, health), auth, middleware, the
error table's HTTP mapping, the OpenAPI schema, the playground pages and their static files,
and the server's drain on shutdown. Routes are thin: they hand requests to ``service.serving``.

May import every package below it (serving, jobs, scheduling, requests, core, observability)
and ``service.config``; nothing imports it but the composition root (``service.app``, the CLI).
"""
