"""`openai:<model>@<base_url>[,<base_url>...]`: any OpenAI-compatible server.

vLLM, SGLang, TGI, llama.cpp, NIM and hosted APIs all speak this. Requests go out
concurrently (at most `concurrency` at once) to the base URL with the fewest requests in
flight, so N replicas behind N URLs share the load. 429, 5xx, timeouts and connection
errors are retried with exponential backoff and jitter (tenacity), honouring
`Retry-After`, up to `max_retries`; after that the call raises `EngineError`, the row is
recorded in failures.jsonl, and the run goes on.

- `generate`: `/chat/completions` (with `prompt_format=plain`, for a base model: `/completions`
  on a Human:/Assistant: transcript, stopping at the next turn). If a server returns fewer than `n` choices (llama.cpp
  ignores `n`), the rest are fetched as separate requests, and that URL is remembered:
  once every URL is known to ignore `n`, the n requests go out together from the start.
- `score`: `/completions` with `echo` + `logprobs` on the prompt built by the model's
  chat template (from a local tokenizer: the `tokenizer` option, or the model name when
  it resolves locally). The prompt goes out as token ids from `cai.engines.chat_tokens`,
  so message content can never become a control token (vLLM, SGLang and OpenAI accept
  token-id prompts; one probe request asks the server once). A server that refuses them
  (llama-cpp-python's does) gets text instead, and then a prompt or continuation holding
  control-token text (`<|im_end|>`...) is refused with an error instead of being sent. The
  continuation's tokens are found from the echoed token texts. A server without echoed
  log-probs gets a clear error naming what it lacks.

Limit: `/chat/completions` sends messages, and the *server* renders and tokenizes them.
Whether "<|im_end|>" inside a message becomes a control token there is the server's
choice (vLLM and llama.cpp make it one today), so generation through this engine is
not protected the way the local engines (`hf:`, `vllm:`) are.

The API key comes from the environment variable named by `api_key_env`; it is never
written anywhere (`describe()` names the variable, not the key).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from typing import Any, Literal

from cai.core.types import Completion, Message, Request
from cai.engines.base import Engine, EngineError, EngineOptions, register_engine
from cai.engines.chat_tokens import (
    check_tokenizer,
    content_is_plain,
    encode_prompt,
    encode_text,
    plain_stops,
    render_plain,
    render_prompt,
)

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIOptions(EngineOptions):
    concurrency: int = 32
    api_key_env: str = "OPENAI_API_KEY"
    max_retries: int = 8
    timeout_s: float = 300.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    #: the served model's tokenizer, whose chat template and token ids build scoring prompts
    #: (`smollm2`, a folder, a hub id); default: the model name, where it resolves locally
    tokenizer: str | None = None
    #: chat: the server renders messages with its chat template; plain: cai writes a Human:/Assistant:
    #: transcript and uses /completions (a base model served without a chat template)
    prompt_format: Literal["chat", "plain"] = "chat"


class RetryableHTTPError(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def parse_openai_spec(rest: str) -> tuple[str, list[str]]:
    match = re.match(r"^(?P<model>.+?)@(?P<urls>https?://.+)$", rest)
    if not match:
        raise EngineError(f"openai spec must look like openai:<model>@<base_url>[,<base_url>...]; got {rest!r}")
    urls = [u.strip().rstrip("/") for u in match["urls"].split(",") if u.strip()]
    return match["model"], urls


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAIEngine(Engine):
    Options = OpenAIOptions

    def __init__(self, rest: str, options: OpenAIOptions | None = None) -> None:
        import httpx

        self.options = options or OpenAIOptions()
        self.model, self.base_urls = parse_openai_spec(rest)
        self.model_id = f"openai:{self.model}"
        self.prompt_format = self.options.prompt_format
        self.in_flight = {url: 0 for url in self.base_urls}
        self.ignores_n: set[str] = set()
        self.stats: dict[str, Any] = {"requests": 0, "retries": 0, "requests_by_url": {u: 0 for u in self.base_urls}}
        self._limit: asyncio.Semaphore | None = None
        self._client: httpx.AsyncClient | None = None
        self._tokenizer: Any = None
        #: whether the server takes token-id prompts on /completions (None: not known yet)
        self.token_prompts: bool | None = None
        self._probe_lock: asyncio.Lock | None = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_urls": self.base_urls, "api_key_env": self.options.api_key_env}

    async def aclose(self) -> None:
        """Close the HTTP client and its connections (a later call opens a new one)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # ---- HTTP with retries -----------------------------------------------------------
    def _http(self) -> Any:
        import httpx

        if self._client is None:
            headers = {}
            key = os.environ.get(self.options.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            self._client = httpx.AsyncClient(headers=headers, timeout=self.options.timeout_s,
                                             limits=httpx.Limits(max_connections=self.options.concurrency * 2))
            self._limit = asyncio.Semaphore(self.options.concurrency)
        return self._client

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """POST to the least-busy base URL, retrying transient failures. Returns (url, json)."""
        import httpx
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

        client = self._http()
        backoff = wait_random_exponential(multiplier=self.options.backoff_base_s, max=self.options.backoff_max_s)

        def wait(state: Any) -> float:
            exc = state.outcome.exception()
            hinted = getattr(exc, "retry_after", None)
            return min(hinted, self.options.backoff_max_s) if hinted is not None else backoff(state)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.options.max_retries + 1), wait=wait, reraise=True,
            retry=retry_if_exception_type((RetryableHTTPError, httpx.TransportError)),
            before_sleep=lambda state: self.stats.__setitem__("retries", self.stats["retries"] + 1))
        assert self._limit is not None
        try:
            async for attempt in retrying:
                with attempt:
                    url = min(self.base_urls, key=self.in_flight.__getitem__)
                    async with self._limit:
                        self.in_flight[url] += 1
                        try:
                            response = await client.post(f"{url}{path}", json=body)
                        finally:
                            self.in_flight[url] -= 1
                    self.stats["requests"] += 1
                    self.stats["requests_by_url"][url] += 1
                    if response.status_code in RETRY_STATUS:
                        raise RetryableHTTPError(f"HTTP {response.status_code} from {url}{path}",
                                                 _retry_after(response.headers.get("retry-after")))
                    if response.status_code >= 400:
                        raise EngineError(f"HTTP {response.status_code} from {url}{path}: {response.text[:300]}")
                    try:
                        return url, response.json()
                    except ValueError as exc:  # a proxy's HTML page, a truncated body: the server's doing
                        raise EngineError(f"{url}{path} answered with something that is not JSON: "
                                          f"{response.text[:200]!r}") from exc
        except RetryableHTTPError as exc:
            raise EngineError(f"gave up after {self.options.max_retries + 1} tries: {exc}") from exc
        except httpx.TransportError as exc:
            raise EngineError(f"gave up after {self.options.max_retries + 1} tries: "
                              f"{type(exc).__name__}: {exc} ({', '.join(self.base_urls)})") from exc
        raise AssertionError("unreachable")

    # ---- generation ------------------------------------------------------------------
    async def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        return list(await asyncio.gather(*[self._generate_one(r) for r in requests]))

    async def _chat(self, request: Request, n: int, seed: int | None) -> tuple[str, dict[str, Any]]:
        p = request.params
        body: dict[str, Any] = {"model": self.model, "messages": list(request.messages), "max_tokens": p.max_tokens,
                                "temperature": p.temperature, "top_p": p.top_p, "n": n}
        if seed is not None:
            body["seed"] = seed
        if self.prompt_format == "plain":
            del body["messages"]
            body.update(prompt=render_plain(request.messages), stop=[*p.stop, *plain_stops()])
            return await self._post("/completions", body)
        if p.stop:
            body["stop"] = list(p.stop)
        return await self._post("/chat/completions", body)

    async def _generate_one(self, request: Request) -> list[Completion]:
        p = request.params
        completions: list[Completion] = []
        if p.n == 1 or not self.ignores_n >= set(self.base_urls):
            url, data = await self._chat(request, p.n, p.seed)
            completions = self._completions(data)
            if len(completions) < p.n:
                self.ignores_n.add(url)
        # the rest one at a time, all at once; straight away once every URL is known to ignore n
        extra = await asyncio.gather(*[
            self._chat(request, 1, None if p.seed is None else p.seed + k) for k in range(len(completions), p.n)])
        completions += [self._completions(more)[0] for _, more in extra]
        return completions[: p.n]

    @staticmethod
    def _completions(data: dict[str, Any]) -> list[Completion]:
        usage = data.get("usage") or {}
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if not choices:
            raise EngineError(f"the server answered with no choices: {str(data)[:200]}")
        out = []
        for choice in choices:
            finish = choice.get("finish_reason") or "stop"
            text = (choice.get("message") or {}).get("content") or choice.get("text") or ""  # chat or completions
            out.append(Completion(text=text.strip(),
                                  finish_reason="length" if finish == "length" else "stop",
                                  prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                  completion_tokens=int(usage.get("completion_tokens") or 0) // max(1, len(choices))))
        return out

    # ---- scoring ---------------------------------------------------------------------
    def _chat_template(self) -> Any:
        """The served model's tokenizer, loaded locally once."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from cai.engines.models import resolve_model_path

            ref = self.options.tokenizer or self.model
            try:
                tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(ref))
            except Exception as exc:  # noqa: BLE001 - explained below
                raise EngineError(
                    f"scoring through {self.model_id} needs the model's chat template from a local tokenizer; "
                    f"{ref!r} could not be loaded ({exc}). Pass -E tokenizer=<folder, gguf or smollm2>.") from exc
            check_tokenizer(tokenizer, self.model_id)
            self._tokenizer = tokenizer
        return self._tokenizer

    async def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        return list(await asyncio.gather(*[self._score_one(messages, c) for c in continuations]))

    async def token_ids(self, text: str) -> list[int]:
        """By the local tokenizer that scoring uses (`-E tokenizer=...`)."""
        return encode_text(self._chat_template(), text)

    async def _score_one(self, messages: Sequence[Message], continuation: str) -> float:
        tokenizer = self._chat_template()
        fmt = self.prompt_format
        if await self._takes_token_prompts() is not False:
            prompt: list[int] | str = encode_prompt(tokenizer, messages, fmt) + encode_text(tokenizer, continuation)
        elif content_is_plain(tokenizer, messages, continuation, fmt):
            prompt = render_prompt(tokenizer, messages, fmt) + continuation
        else:
            raise EngineError(f"{self.model_id}: the server takes only text prompts, and this prompt or continuation "
                              "holds control-token text (such as <|im_end|>) that the server would read as real "
                              "control tokens; not scored")
        body = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "echo": True,
                "logprobs": 1}
        try:
            _, data = await self._post("/completions", body)
        except EngineError as exc:
            raise EngineError(f"{self.model_id}: this server cannot score continuations: it needs /completions "
                              f"with echo and logprobs (vLLM, SGLang and llama.cpp with --logits_all true "
                              f"support it); the server said: {exc}") from exc
        logprobs = ((data.get("choices") or [{}])[0]).get("logprobs") or {}
        tokens, values = logprobs.get("tokens"), logprobs.get("token_logprobs")
        if not tokens or not values or len(tokens) != len(values):
            raise EngineError(f"{self.model_id}: the server answered /completions without echoed prompt log-probs; "
                              "it cannot be used for log-prob labels (try --labeler rank-all)")
        return continuation_logprob(tokens, values, continuation)

    async def _takes_token_prompts(self) -> bool | None:
        """Whether /completions takes a prompt of token ids, asked once (None: not known yet)."""
        if self.token_prompts is None:
            lock = self._probe_lock = self._probe_lock or asyncio.Lock()
            if lock.locked():  # another request is asking: take its answer, even "not known"
                async with lock:
                    pass
            else:
                async with lock:
                    self.token_prompts = await self._probe_token_prompts()
        return self.token_prompts

    async def _probe_token_prompts(self) -> bool | None:
        """One request, no retries. A refusal is a 4xx, or llama-cpp-python's 500 naming the
        prompt field; a transient failure decides nothing (the real request retries)."""
        import httpx

        body = {"model": self.model, "prompt": encode_text(self._chat_template(), "Hello"), "max_tokens": 1,
                "temperature": 0.0}
        try:
            response = await self._http().post(f"{self.base_urls[0]}/completions", json=body)
        except httpx.TransportError:
            return None
        status = response.status_code
        if status < 300:
            return True
        if (400 <= status < 500 and status not in RETRY_STATUS) or (status == 500 and "prompt" in response.text):
            return False
        return None


def continuation_logprob(tokens: list[str], values: list[float | None], continuation: str) -> float:
    """Sum the log-probs of the echoed tokens that spell `continuation`.

    Offsets are rebuilt from the token texts (servers disagree on `text_offset` around
    special tokens). The continuation is the last place its text occurs; the generated
    token(s) after it are excluded.
    """
    starts, position = [], 0
    for tok in tokens:
        starts.append(position)
        position += len(tok)
    text = "".join(tokens)
    begin = text.rfind(continuation)
    if begin < 0:
        raise EngineError("could not find the scored continuation in the server's echoed tokens")
    end = begin + len(continuation)
    total = 0.0
    for start, tok, value in zip(starts, tokens, values):
        if start < end and start + len(tok) > begin:
            if value is None:
                raise EngineError("the server gave no log-prob for a continuation token")
            total += float(value)
    return total


register_engine("openai", OpenAIEngine)
