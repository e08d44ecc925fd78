"""Run the ranking service, and drive it from Python as a separate process.

``serve(artifact, host, port, ...)`` loads the artifact and runs the FastAPI app (``xdeepfm.app``)
under uvicorn, one process, loopback by default (what ``xdeepfm serve`` calls). ``build_server``
is the uvicorn server it runs, with the connection limits of ``Limits``: ``keep_alive_s`` for idle
keep-alive connections, ``header_timeout_s`` for a connection to send a complete request head
(else it is closed: a client that connects and trickles, or sends nothing, holds nothing for
long), ``max_connections`` (uvicorn's ``limit_concurrency``: beyond it, a plain-text 503).

``RankingServer`` starts ``python -m xdeepfm serve`` as a subprocess on a free loopback port,
waits until ``GET /readyz`` answers 200 (artifact loaded, text encoders warmed up), talks to it
over HTTP and stops it::

    with RankingServer("artifacts/ranker") as server:
        top = server.rank({"user_id": "7", "age": 31}, candidates, top_k=10)["items"]
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from mmcore.runtime import setup_logging
from xdeepfm.app import Limits, create_app
from xdeepfm.catalog import Ingestor, open_store
from xdeepfm.recommend import Recommender
from xdeepfm.serving import ScoringEngine

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def http_protocol_base() -> type:
    """uvicorn's HTTP/1.1 protocol on httptools (llhttp, C) where it is installed, else the pure-Python h11."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        return HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a declared dependency
        from uvicorn.protocols.http.h11_impl import H11Protocol
        return H11Protocol


def header_timeout_protocol(header_timeout_s: float, base: type | None = None) -> type:
    """uvicorn's HTTP protocol (``http_protocol_base``), closing a connection that has not sent a complete
    request head within ``header_timeout_s`` of connecting or of its previous response (uvicorn itself
    waits forever)."""
    base = base or http_protocol_base()

    class HeadTimeoutProtocol(base):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            if not self.transport.is_closing():
                self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # no request head since the timer was armed
                log.info("closing the connection of %s: no complete request head within %g s",
                         self.client[0] if self.client else "?", header_timeout_s)
                self.transport.close()

    return HeadTimeoutProtocol


def build_server(app, host: str, port: int, limits: Limits, log_level: str = "info"):
    """The ``uvicorn.Server`` for ``app`` with the connection limits of ``limits`` (call ``.run()``)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), access_log=False, log_config=None,
                            timeout_graceful_shutdown=5, timeout_keep_alive=limits.keep_alive_s,
                            limit_concurrency=limits.max_connections, http=header_timeout_protocol(limits.header_timeout_s))
    return uvicorn.Server(config)


def serve(artifact: str | Path, host: str = "127.0.0.1", port: int = 8000, max_candidates: int = 1000,
          max_body_bytes: int = 2_000_000, text_cache_dir: str | Path | None = None, threads: int | None = 1,
          log_level: str = "info", limits: Limits | None = None, store: str | Path | None = None,
          ingestor: Callable[[ScoringEngine], Ingestor] | None = None, processes: int = 1, writable: bool = False,
          recommender: str | Path | None = None) -> None:
    """Load ``artifact`` and serve it until interrupted (SIGINT/SIGTERM end it cleanly).

    ``limits`` (default ``Limits()``) holds every bound; ``max_candidates`` and ``max_body_bytes``
    replace its two fields. ``threads``: torch intra-op threads per process (default 1, so that the
    scoring and encoding threads leave a core to the event loop; None: torch's choice). ``store``:
    the item/user store file for ranking by id and ``POST /v1/items`` (accepted with ``writable``);
    ``recommender``: the directory of a ``xdeepfm.recommend.Recommender`` for ``POST /v1/recommend``. ``ingestor``: a picklable
    callable making the video ingestor from the engine (the application layer's). ``processes``
    > 1 runs that many server processes behind one acceptor that hands each connection to the least
    busy of them (``serve_processes``); they share the store file, so an item one of them ingests is
    seen by all.
    """
    limits = Limits(**{**asdict(limits or Limits()), "max_candidates": max_candidates, "max_body_bytes": max_body_bytes})
    if host not in LOOPBACK:
        log.warning("binding %s: the service has no authentication; keep it behind a trusted network", host)
    options = dict(artifact=artifact, text_cache_dir=text_cache_dir, threads=threads, log_level=log_level, limits=limits,
                   store=store, ingestor=ingestor, writable=writable, recommender=recommender)
    if processes <= 1:
        app = load_app(**options)
        build_server(app, host, port, limits, log_level).run()
        return
    serve_processes(options, host, port, processes)


def serve_processes(options: dict, host: str, port: int, processes: int) -> None:
    """``processes`` server processes behind one acceptor (this process), until SIGTERM/SIGINT or a child's exit.

    This process listens on (host, port), accepts each connection and hands it (the file descriptor,
    over a Unix socket: SCM_RIGHTS) to the child with the fewest open connections, ties in turn; each
    child runs the app on the connections it is given (``ConnectionServer``). Spreading connections
    by count, not by the kernel's hash of their addresses (SO_REUSEPORT), keeps 4 keep-alive clients
    at 2 + 2 on 2 processes instead of, by chance, 3 + 1 or 4 + 0. Accepting starts once every child
    has loaded its artifact; connections made before wait in the listen backlog.
    """
    listener = listening_socket(host, port)
    context = multiprocessing.get_context("spawn")
    open_connections = context.Array("l", processes)  # per child: handed over and not yet closed
    pipes, children = [], []
    for i in range(processes):
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        child = context.Process(target=_serve_process, args=(options, child_end, open_connections, i),
                                name=f"xdeepfm-serve-{i}")
        child.start()
        child_end.close()
        pipes.append(parent_end)
        children.append(child)
    log.info("serving %s on %s:%d with %d processes (pids %s)", options["artifact"], host, port, processes,
             [c.pid for c in children])
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        waiting = set(range(processes))
        while waiting and not stopping and all(c.is_alive() for c in children):  # each child says b"r" when loaded
            readable, _, _ = select.select([pipes[i] for i in waiting], [], [], 0.5)
            for pipe in readable:
                if pipe.recv(1) == b"r":
                    waiting.discard(pipes.index(pipe))
        handed = 0
        while not stopping and all(c.is_alive() for c in children):
            if not select.select([listener], [], [], 0.5)[0]:
                continue
            try:
                connection, _ = listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            with open_connections.get_lock():
                target = min(range(processes), key=lambda i: (open_connections[i], (i - handed) % processes))
                open_connections[target] += 1
            handed = target + 1
            try:
                socket.send_fds(pipes[target], [b"c"], [connection.fileno()])
            except OSError as exc:
                log.error("could not hand a connection to process %d: %s", target, exc)
                with open_connections.get_lock():
                    open_connections[target] -= 1
            finally:
                connection.close()
        dead = [c for c in children if not c.is_alive()]
        if dead and not stopping:
            log.error("server process %s ended (exit code %s); stopping the service", dead[0].name, dead[0].exitcode)
    finally:
        listener.close()
        for child in children:
            if child.is_alive():
                child.terminate()
        for child in children:
            child.join(10)
        for pipe in pipes:
            pipe.close()


def load_app(artifact: str | Path, text_cache_dir: str | Path | None, threads: int | None, log_level: str, limits: Limits,
             store: str | Path | None, ingestor: Callable[[ScoringEngine], Ingestor] | None, writable: bool = False,
             recommender: str | Path | None = None):
    """The app of one server process: the engine, the store it checks against the artifact, the ingestor, the recommender."""
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    engine = ScoringEngine.load(artifact, text_cache_dir, text_lru=limits.text_lru)
    opened = open_store(engine, store) if store is not None else None
    log.info("loaded %s in %.2f s (%d inputs, torch threads %d, %d scoring worker(s), queue %d, encode queue %d%s)",
             artifact, time.perf_counter() - started, len(engine.fields), torch.get_num_threads(), limits.workers,
             limits.queue, limits.encode_queue,
             f", store {store}: {opened.count('item')} items, {opened.count('user')} users" if opened else "")
    recall = None
    if recommender is not None:
        if opened is None:
            raise ValueError("--recommender needs --store: recommendations are ranked from the store's items")
        recall = Recommender.load(recommender, engine.artifact.pipeline)
        log.info("recommender %s: channels %s, %d candidates", recommender, list(recall.channels), recall.merge.n)
    app = create_app(engine, limits, store=opened, ingestor=ingestor(engine) if ingestor is not None else None,
                     writable=writable, recommender=recall)
    gc.collect()
    gc.freeze()  # the loaded artifact and the imports: out of the collector's sight (app.py, warm-up)
    return app


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), non-blocking. ``proto=IPPROTO_TCP`` because asyncio sets
    TCP_NODELAY only on sockets that say they are TCP (without it every small response waits ~40 ms for
    a delayed ACK); the accepted connections inherit it."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _serve_process(options: dict, pipe: socket.socket, open_connections, index: int) -> None:
    """One of ``serve_processes``' children: its own engine, store connection and app, serving the
    connections the acceptor hands it over ``pipe``."""
    setup_logging(options["log_level"].upper())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the acceptor ends the children (SIGTERM)
    app = load_app(**options)
    server = ConnectionServer(build_server(app, "127.0.0.1", 0, options["limits"], options["log_level"]).config,
                              pipe, open_connections, index)
    server.run(sockets=[])


class ConnectionServer:
    """A ``uvicorn.Server`` that listens on nothing and serves the connections received over a Unix socket.

    Made by ``ConnectionServer(config, pipe, open_connections, index)``; the class is built on first use
    so that importing this module does not import uvicorn."""

    def __new__(cls, config, pipe: socket.socket, open_connections, index: int):
        import uvicorn

        class _ConnectionServer(uvicorn.Server):
            async def startup(self, sockets=None) -> None:
                await super().startup(sockets=[])  # the lifespan (warm-up) and no listener
                if self.should_exit:
                    return
                loop = asyncio.get_running_loop()
                base = self.config.http_protocol_class

                def create_protocol() -> asyncio.Protocol:
                    protocol = base(config=self.config, server_state=self.server_state, app_state=self.lifespan.state)
                    lost = protocol.connection_lost

                    def connection_lost(exc) -> None:
                        with open_connections.get_lock():
                            open_connections[index] -= 1
                        lost(exc)

                    protocol.connection_lost = connection_lost
                    return protocol

                def receive() -> None:
                    try:
                        _, fds, _, _ = socket.recv_fds(pipe, 1, 8)
                    except (BlockingIOError, InterruptedError):
                        return
                    if not fds:  # the acceptor is gone
                        loop.remove_reader(pipe.fileno())
                        self.should_exit = True
                        return
                    for fd in fds:
                        task = loop.create_task(loop.connect_accepted_socket(create_protocol, socket.socket(fileno=fd)))
                        task.add_done_callback(not_served)

                def not_served(task: asyncio.Task) -> None:  # the connection failed before it was made: uncount it
                    if task.cancelled() or task.exception() is not None:
                        with open_connections.get_lock():
                            open_connections[index] -= 1

                pipe.setblocking(False)
                loop.add_reader(pipe.fileno(), receive)
                pipe.send(b"r")

        return _ConnectionServer(config)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it; another process may take it before us)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerError(RuntimeError):
    """The service process did not come up (the message holds the end of its log)."""


class RankingServer:
    """``python -m xdeepfm serve`` as a child process, with a small HTTP client.

    ``log_path`` receives the server's stdout and stderr (the access log included); by default
    they go to a temp file that ``stop`` removes. ``args`` adds serve options (e.g.
    ``["--max-candidates", "100"]``); with ``--processes N`` the server is ready once N distinct
    processes have answered ``/readyz``. ``module`` is the program run as ``python -m MODULE serve``
    (``mmapp`` for the service that also ingests videos).
    """

    def __init__(self, artifact: str | Path, host: str = "127.0.0.1", port: int | None = None,
                 args: Sequence[str] = (), log_path: str | Path | None = None, startup_timeout: float = 120.0,
                 request_timeout: float = 60.0, module: str = "xdeepfm") -> None:
        self.module = module
        self.artifact, self.host, self.port = Path(artifact), host, port
        self.args, self.startup_timeout, self.request_timeout = list(args), startup_timeout, request_timeout
        self.log_path = Path(log_path) if log_path else None
        self._own_log = log_path is None
        self.process: subprocess.Popen | None = None
        self._session = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "RankingServer":
        """Start the process and wait for /readyz; retries once on another port if the port was taken."""
        import tempfile

        import requests

        if self._own_log:
            fd, name = tempfile.mkstemp(prefix="xdeepfm_serve_", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._session = requests.Session()
        fixed = self.port is not None
        for _ in range(3):
            port = self.port if fixed else free_port(self.host)
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                   "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
            command = [sys.executable, "-m", self.module, "serve", "--artifact", str(self.artifact), "--host", self.host,
                       "--port", str(port), *self.args]
            with open(self.log_path, "ab") as out:
                self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
            self.port = port
            if self._wait_ready():
                log.info("ranking service up at %s (pid %d)", self.url, self.process.pid)
                return self
            self._terminate()
            if fixed or "address already in use" not in self.log_tail().lower():
                break  # else the free port was taken in between: pick another
        tail = self.log_tail()
        self.stop()
        raise ServerError(f"the ranking service did not become ready within {self.startup_timeout:.0f} s; "
                          f"its log ends with:\n{tail}")

    def _wait_ready(self) -> bool:
        """Poll GET /readyz until 200 (True); False if the process ends, the warm-up fails or time runs out."""
        import requests

        deadline = time.monotonic() + self.startup_timeout
        processes = int(self.args[self.args.index("--processes") + 1]) if "--processes" in self.args else 1
        ready: set[int] = set()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                response = self._session.get(f"{self.url}/readyz", timeout=2, headers={"Connection": "close"})
                if response.status_code == 200:
                    ready.add(response.json().get("pid", 0))
                    if len(ready) >= processes:
                        return True
                    continue
                if "warm-up failed" in response.text:
                    return False
            except requests.RequestException:
                pass
            time.sleep(0.1)
        return False

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path and self.log_path.is_file() else ""

    def _terminate(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after 10 s) and remove the temp log."""
        self._terminate()
        if self._session is not None:
            self._session.close()
        if self._own_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> "RankingServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- client ------------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any):
        """The raw ``requests.Response`` (no status check)."""
        return self._session.request(method, f"{self.url}{path}", timeout=self.request_timeout, **kwargs)

    def _json(self, method: str, path: str, **kwargs: Any) -> dict:
        response = self.request(method, path, **kwargs)
        if response.status_code != 200:
            raise ServerError(f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response.json()

    def rank(self, user: dict, candidates: list[dict], top_k: int | None = None, unknown: str = "oov") -> dict:
        return self._json("POST", "/v1/rank", json={"user": user, "candidates": candidates, "top_k": top_k,
                                                    "unknown": unknown})

    def rank_ids(self, user_id: str, candidate_ids: list[str], top_k: int | None = None, context: dict | None = None,
                 unknown: str = "oov") -> dict:
        """``POST /v1/rank`` by id: the features come from the service's store."""
        return self._json("POST", "/v1/rank", json={"user_id": user_id, "candidate_ids": candidate_ids, "top_k": top_k,
                                                    "context": context or {}, "unknown": unknown})

    def recommend(self, user_id: str, k: int = 10, exclude_seen: bool = True, context: dict | None = None) -> dict:
        """``POST /v1/recommend``: recall over the catalogue, ranked (a service started with a recommender)."""
        return self._json("POST", "/v1/recommend", json={"user_id": user_id, "k": k, "exclude_seen": exclude_seen,
                                                         "context": context or {}})

    def add_events(self, events: list[dict]) -> dict:
        """``POST /v1/events``: each ``{"user_id", "item_id", "label", "time"}``."""
        return self._json("POST", "/v1/events", json={"events": events})

    def put_items(self, items: list[dict]) -> dict:
        """``POST /v1/items``: each ``{"columns": {...}, "vectors": {...}}`` or with ``"video"`` (base64)."""
        return self._json("POST", "/v1/items", json={"items": items})

    def score(self, rows: list[dict], unknown: str = "oov") -> dict:
        return self._json("POST", "/v1/score", json={"rows": rows, "unknown": unknown})

    def model(self) -> dict:
        return self._json("GET", "/v1/model")

    def health(self) -> dict:
        return self._json("GET", "/healthz")

    def ready(self) -> dict:
        return self._json("GET", "/readyz")
