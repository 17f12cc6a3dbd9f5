"""LLM feedback: prompts, reply parsing, the label store and the asynchronous annotation service."""

from kudos.feedback.annotator import Annotator, AnnotatorConfig, AnnotatorMetrics, Labeler
from kudos.feedback.prompts import GOALS, PairwiseFromPointwise, PromptTemplate
from kudos.feedback.store import LabelRecord, LabelStore, StoreError, open_store

__all__ = [
    "GOALS",
    "Annotator",
    "AnnotatorConfig",
    "AnnotatorMetrics",
    "LabelRecord",
    "LabelStore",
    "Labeler",
    "PairwiseFromPointwise",
    "PromptTemplate",
    "StoreError",
    "open_store",
]
