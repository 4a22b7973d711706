"""One service per task: a validated wire request in, tasks through the runtime, a wire answer out."""

from service.serving.compare import CompareService
from service.serving.rank import RankService
from service.serving.score import ScoreService

__all__ = ["CompareService", "RankService", "ScoreService"]
