"""A stand-in for an OpenAI-compatible LLM server (chat completions, ``GET /v1/models``), shared by
the benches and tests that measure what is around the LLM rather than the LLM itself.

It answers every request at once (or after ``delay_s``): "1" or "0" by a hash of the prompt, with
answer-token log-probabilities. With ``faults`` it fails every completion instead, with each fault
in turn: ``garbage`` (a non-JSON body), ``http500``, ``no_choices`` (a reply with no choices). It
counts the requests per prompt in ``asked``. Not a model: for measuring what is around the LLM,
and for races between runs that share a store.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

FAULTS = ("garbage", "http500", "no_choices")


class StandInLLM:
    """The stand-in server on a free localhost port; ``url`` is its ``.../v1`` base URL."""

    def __init__(
        self, model_id: str, delay_s: float = 0.0, faults: Sequence[str] = (), owned_by: str = "kudos-stand-in"
    ) -> None:
        self.model_id = model_id
        self.owned_by = owned_by  # GET /models says who serves it: "vllm" stands in for a vLLM server
        self.delay_s = delay_s
        self.asked: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        next_fault = itertools.cycle(faults).__next__ if faults else None
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                model = {"id": stand_in.model_id, "object": "model", "owned_by": stand_in.owned_by}
                self._send(200, {"object": "list", "data": [model]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                prompt = body["messages"][-1]["content"]
                with stand_in._lock:
                    stand_in.asked[prompt] += 1
                    fault = next_fault() if next_fault is not None else None
                time.sleep(stand_in.delay_s)
                if fault == "http500":
                    self._send(500, {"error": "internal"})
                elif fault == "garbage":
                    self._raw(200, b"<html>upstream exploded")
                elif fault == "no_choices":
                    self._send(200, {"choices": []})
                else:
                    answer = "1" if hashlib.blake2b(prompt.encode(), digest_size=1).digest()[0] % 2 else "0"
                    other = "0" if answer == "1" else "1"
                    top = [{"token": answer, "logprob": -0.1}, {"token": other, "logprob": -2.4}]
                    self._send(200, {"model": stand_in.model_id, "choices": [{
                        "index": 0, "message": {"role": "assistant", "content": answer},
                        "logprobs": {"content": [{"token": answer, "logprob": -0.1, "top_logprobs": top}]},
                    }]})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                self._raw(status, json.dumps(payload).encode())

            def _raw(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def duplicates(self) -> int:
        """Requests beyond the first for each prompt."""
        with self._lock:
            return sum(n - 1 for n in self.asked.values())

    def reset(self) -> None:
        with self._lock:
            self.asked.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
