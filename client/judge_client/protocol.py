"""The service's HTTP wire models: what each endpoint accepts and answers.

One import for all of them; each lives in the module named after what it holds:
``fields`` (limits, field types, the critique spec), ``score_requests`` and
``score_results`` (/v1/score), ``compare`` (/v1/compare), ``rank`` (/v1/rank) and
``status`` (readiness, health, errors).
"""

from __future__ import annotations

from judge_client.compare import (
    ComparePair,
    CompareRequest,
    CompareResponse,
    LengthControl,
    OrderCritique,
    PairVerdict,
)
from judge_client.fields import (
    CHAT_TEMPLATE_KWARGS_DESCRIPTION,
    DEFAULT_LABELS,
    MAX_CRITERIA,
    MAX_HIDDEN_LAYERS,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    MAX_LAYER_INDEX,
    MAX_MARKER_CHARS,
    MAX_RANK_CANDIDATES,
    MAX_TEXT_CHARS,
    MAX_TIMEOUT_S,
    MIN_TIMEOUT_S,
    MT_BENCH_LABELS,
    ChatTemplateKwargs,
    ChatValue,
    CriterionName,
    CritiqueSpec,
    FiniteFloat,
    ItemId,
    Label,
    Method,
    NonEmptyText,
    Template,
    Text,
    Timeout,
)
from judge_client.rank import RankCandidate, RankedCandidate, RankRequest, RankResponse
from judge_client.score_requests import (
    SCORE_REQUEST,
    CriterionSpec,
    RawItem,
    RawScoreRequest,
    RubricSpec,
    ScoreRequest,
    StructuredItem,
    StructuredScoreRequest,
    score_request,
)
from judge_client.score_results import CalibratedScore, CriterionScore, ItemScore, ScoreResponse
from judge_client.status import ErrorDetail, ErrorResponse, HealthResponse, ReadyResponse

__all__ = [
    "CHAT_TEMPLATE_KWARGS_DESCRIPTION",
    "DEFAULT_LABELS",
    "MAX_CRITERIA",
    "MAX_HIDDEN_LAYERS",
    "MAX_LABELS",
    "MAX_LABEL_CHARS",
    "MAX_LAYER_INDEX",
    "MAX_MARKER_CHARS",
    "MAX_RANK_CANDIDATES",
    "MAX_TEXT_CHARS",
    "MAX_TIMEOUT_S",
    "MIN_TIMEOUT_S",
    "MT_BENCH_LABELS",
    "SCORE_REQUEST",
    "CalibratedScore",
    "ChatTemplateKwargs",
    "ChatValue",
    "ComparePair",
    "CompareRequest",
    "CompareResponse",
    "CriterionName",
    "CriterionScore",
    "CriterionSpec",
    "CritiqueSpec",
    "ErrorDetail",
    "ErrorResponse",
    "FiniteFloat",
    "HealthResponse",
    "ItemId",
    "ItemScore",
    "Label",
    "LengthControl",
    "Method",
    "NonEmptyText",
    "OrderCritique",
    "PairVerdict",
    "RankCandidate",
    "RankRequest",
    "RankResponse",
    "RankedCandidate",
    "RawItem",
    "RawScoreRequest",
    "ReadyResponse",
    "RubricSpec",
    "ScoreRequest",
    "ScoreResponse",
    "StructuredItem",
    "StructuredScoreRequest",
    "Template",
    "Text",
    "Timeout",
    "score_request",
]
