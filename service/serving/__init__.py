"""Serving: one service per endpoint (``score``, ``compare``, ``rank``), each a handler on
the one path every endpoint takes (``endpoint``: readiness once, the deadline, preparation
by ``service.requests``, the run on a ``Runner`` (``runner``), the answer, the metrics): a
validated wire request in, a wire answer out. Owns the answers' wire fields, the runtime
(``runtime``: model, engine, queue, prompts and limits), the lifecycle it moves along
(``lifecycle``: readiness, drain, liveness, the exit code) and the readout assets it is
handed (``assets``).

May import ``service.requests``, ``service.scheduling``, ``service.engines``,
``service.methods``, ``service.core``, ``service.observability`` and ``service.config``;
not HTTP and not the batch jobs (which use it).
"""

from service.serving.compare import CompareService
from service.serving.rank import RankService
from service.serving.score import ScoreService

__all__ = ["CompareService", "RankService", "ScoreService"]
