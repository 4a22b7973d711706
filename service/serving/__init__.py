"""One service per task: a validated wire request in, tasks through the runtime, a wire answer out."""

from service.serving.compare import CompareService
from service.serving.score import ScoreService

__all__ = ["CompareService", "ScoreService"]
