"""Real local servers for tests: llama.cpp's OpenAI-compatible server, and a fault proxy.

The server is the real `llama_cpp.server` process serving the embedded GGUF on
127.0.0.1. The proxy forwards to it and injects scripted 429/500 answers first; it only
listens on 127.0.0.1 and every test that starts one stops it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 180.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout}s")


class ServerDied(AssertionError):
    """The llama.cpp server process is gone: its exit status and what it printed say why."""


def _explain_exit(code: int | None) -> str:
    import signal

    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = (" A SIGILL or SIGSEGV on the first request is what a llama-cpp-python built for another CPU does "
                "(GGML_NATIVE): the Makefile builds it with -DGGML_NATIVE=OFF; if a native build is installed, "
                "remove ~/.cache/cai-wheels and .venv/.installed and run make setup again.")
        return f"killed by {name}.{hint if name in ('SIGILL', 'SIGSEGV', 'SIGBUS') else ''}"
    return f"exited with status {code}."


class LlamaServer:
    def __init__(self, port: int | None = None) -> None:
        from cai.engines.models import embedded_gguf_path

        self.port = port or free_port()
        self.gguf: Path = embedded_gguf_path()
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "LlamaServer":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--model_alias", "smollm2",
             "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "4096", "--logits_all", "true",
             "--n_threads", "2", "--verbose", "false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_ready(f"{self.base_url}/models", proc=self.proc)
        self.first_request()
        return self

    def first_request(self) -> None:
        """One real completion, so a server that dies on its first request fails here, saying why,
        instead of as connection errors retried on every row of the test that meets it."""
        try:
            httpx.post(f"{self.base_url}/completions", json={"model": "smollm2", "prompt": "Hi", "max_tokens": 1},
                       timeout=120).raise_for_status()
        except httpx.HTTPError as exc:
            self.assert_alive()
            raise AssertionError(f"llama.cpp server at {self.base_url} is up but its first completion failed: {exc}")

    def assert_alive(self) -> None:
        """Raise `ServerDied` with the exit status and the server's last output if the process is gone."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is None:
            return
        tail = (self.proc.stderr.read() if self.proc.stderr else "")[-2000:]
        raise ServerDied(f"the llama.cpp server ({self.base_url}) died: {_explain_exit(code)} Its last output: "
                         f"{tail or '(none)'}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


class FaultProxy:
    """Answers the first requests with the scripted status codes, then forwards."""

    def __init__(self, target: str, faults: list[int], retry_after: str = "0.2") -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        self.target, self.faults, self.injected, self.forwarded = target.rstrip("/"), list(faults), 0, 0
        self.port = free_port()
        lock = threading.Lock()

        async def handle(request: Request) -> Response:
            with lock:
                code = self.faults.pop(0) if self.faults else None
            if code is not None:
                self.injected += 1
                headers = {"Retry-After": retry_after} if code == 429 else {}
                return JSONResponse({"error": {"message": "injected"}}, status_code=code, headers=headers)
            self.forwarded += 1
            async with httpx.AsyncClient(timeout=300) as client:
                upstream = await client.request(request.method, self.target + request.url.path,
                                                content=await request.body(),
                                                headers={"content-type": "application/json"})
            return Response(upstream.content, status_code=upstream.status_code, media_type="application/json")

        app = Starlette(routes=[Route("/{path:path}", handle, methods=["GET", "POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
