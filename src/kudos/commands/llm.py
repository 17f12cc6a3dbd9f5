"""``kudos llm serve``: one shared local OpenAI-compatible endpoint on the embedded model.

Runs ``python -m llama_cpp.server`` on the embedded GGUF (assembled from its PyPI part packages on
first use). Point other runs at it with ``--llm http://HOST:PORT/v1``; labels are stored under the
same model id as the in-process embedded backend.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``kudos llm serve`` to the CLI."""
    llm = subparsers.add_parser("llm", help="the embedded LLM as a local server")
    sub = llm.add_subparsers(dest="llm_command", metavar="LLM_COMMAND", required=True)
    p = sub.add_parser(
        "serve",
        help="serve the embedded model over the OpenAI-compatible HTTP API",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    p.add_argument("--n-ctx", type=int, default=2048, help="context length in tokens")
    p.add_argument(
        "--passive-wait", action="store_true",
        help="idle llama.cpp threads sleep instead of spinning (when sharing cores; slower)",
    )  # fmt: skip
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Handler of ``kudos llm serve``: blocks until the server exits or Ctrl-C."""
    from rich.console import Console

    from kudos.feedback.model_files import MODEL_ID

    from kudos.feedback.serve import serve

    def ready(url: str) -> None:
        Console(soft_wrap=True).print(f"serving [bold]{MODEL_ID}[/] at [bold]{url}[/] (use --llm {url}); Ctrl-C stops it")

    return serve(args.host, args.port, args.threads, args.n_ctx, args.passive_wait, on_ready=ready)
