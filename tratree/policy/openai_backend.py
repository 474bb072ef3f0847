"""Any OpenAI-compatible chat endpoint (a vLLM server, FastChat): concurrent HTTP requests."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tratree.policy.base import STOP_STRINGS, GenerationRequest, cut_reply


class OpenAIBackend:
    """POSTs ``/v1/chat/completions``; the key comes from OPENAI_API_KEY when the server wants one."""

    def __init__(self, endpoint: str, model: str, max_new_tokens: int = 128, concurrency: int = 8,
                 timeout: float = 300.0, api_key: str | None = None) -> None:
        base = endpoint.rstrip("/")
        self.url = (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.concurrency = concurrency
        self.timeout = timeout
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")

    def request_body(self, request: GenerationRequest) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": request.messages,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": self.max_new_tokens,
            "seed": request.seed,
            "stop": STOP_STRINGS,
        }

    def _post(self, request: GenerationRequest) -> str:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, json.dumps(self.request_body(request)).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:200]
            raise RuntimeError(f"{self.url}: HTTP {err.code}: {detail}") from None
        except urllib.error.URLError as err:
            raise RuntimeError(f"{self.url}: {err.reason}") from None
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"{self.url}: unexpected response {json.dumps(body)[:200]}") from None
        return cut_reply(content or "")

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._post, requests))

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own connection."""
