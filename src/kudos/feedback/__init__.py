"""LLM feedback: LLM backends, prompts, reply parsing, the label store and the asynchronous
annotation service."""

from kudos.feedback.annotator import Annotator, AnnotatorConfig, AnnotatorMetrics
from kudos.feedback.backend import LLMBackend, LLMError, LLMReply, LLMRequest
from kudos.feedback.embedded import EmbeddedLLM
from kudos.feedback.endpoints import EndpointPool, HTTPConfig, OpenAIBackend
from kudos.feedback.factory import make_backend
from kudos.feedback.labeler import Labeler
from kudos.feedback.model_files import ensure_embedded_model
from kudos.feedback.prompts import GOALS, PairwiseFromPointwise, PromptTemplate
from kudos.feedback.store import LabelRecord, LabelStore, StoreError, open_store

__all__ = [
    "GOALS",
    "Annotator",
    "AnnotatorConfig",
    "AnnotatorMetrics",
    "EmbeddedLLM",
    "EndpointPool",
    "HTTPConfig",
    "LLMBackend",
    "LLMError",
    "LLMReply",
    "LLMRequest",
    "LabelRecord",
    "LabelStore",
    "Labeler",
    "OpenAIBackend",
    "PairwiseFromPointwise",
    "PromptTemplate",
    "StoreError",
    "ensure_embedded_model",
    "make_backend",
    "open_store",
]
