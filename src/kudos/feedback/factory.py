"""The backend factory: one :class:`~kudos.feedback.backend.LLMBackend` from a command-line string."""

from __future__ import annotations

from kudos.errors import KudosError
from kudos.feedback.backend import LLMBackend
from kudos.feedback.embedded import EmbeddedLLM
from kudos.feedback.endpoints import (
    EndpointPool,
    HTTPConfig,
    OpenAIBackend,
    endpoint_concurrency,
    list_models,
    served_model,
)


def make_backend(
    spec: str | None,
    *,
    threads: int | None = None,
    model: str | None = None,
    config: HTTPConfig | None = None,
) -> LLMBackend:
    """Build a backend from a spec string.

    - None or ``"embedded"``: :class:`~kudos.feedback.embedded.EmbeddedLLM` with ``threads``
      llama.cpp threads (default 1, for sharing the cores with a trainer); ``model`` must be None.
    - ``"http://host:port/v1[,http://host2:port/v1...]"``: an :class:`EndpointPool`; ``model`` is the
      served model's name (default: the one model the endpoints serve, see :func:`served_model`);
      a vLLM endpoint gets ``config.vllm_concurrency`` requests in flight, others ``config.concurrency``
      (see :func:`endpoint_concurrency`; an endpoint down at the start counts as not vLLM).
    """
    if spec is None or spec == "embedded":
        if model is not None:
            raise KudosError(f"a model name ({model!r}) applies to HTTP endpoints; the embedded backend has one model")
        return EmbeddedLLM(threads=threads or 1)
    urls = [u.strip() for u in spec.split(",") if u.strip()]
    if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
        raise KudosError(f"unknown LLM backend {spec!r}: use 'embedded' or 'http://host:port/v1[,http://...]'")
    config = config or HTTPConfig()
    listed = list_models(urls, config)
    model_id = served_model(urls, model, config, listed)
    endpoints = [OpenAIBackend(u, model_id, config, endpoint_concurrency(listed.get(u, []), config)) for u in urls]
    return EndpointPool(endpoints, config)
