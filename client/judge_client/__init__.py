"""Client of the judge-scoring service: typed requests and answers over httpx."""

from judge_client.client import AsyncJudgeClient, JudgeClient, JudgeError
from judge_client.protocol import (
    Batch,
    CompareRequest,
    CompareResponse,
    CritiqueSpec,
    FileObject,
    ItemScore,
    OrderCritique,
    PairVerdict,
    RankRequest,
    RankResponse,
    RawItem,
    RawScoreRequest,
    ScoreRequest,
    ScoreResponse,
    StructuredItem,
    StructuredScoreRequest,
    score_request,
)

__all__ = [
    "AsyncJudgeClient",
    "Batch",
    "CompareRequest",
    "CompareResponse",
    "CritiqueSpec",
    "FileObject",
    "ItemScore",
    "JudgeClient",
    "JudgeError",
    "OrderCritique",
    "PairVerdict",
    "RankRequest",
    "RankResponse",
    "RawItem",
    "RawScoreRequest",
    "ScoreRequest",
    "ScoreResponse",
    "StructuredItem",
    "StructuredScoreRequest",
    "score_request",
]
__version__ = "0.1.0"
