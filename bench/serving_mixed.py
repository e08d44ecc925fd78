"""Serving under mixed load: good requests from ``wrk``, while huge requests, slow clients and a liveness probe run.

1. **Artifact.** As ``bench/serving_load.py``: ``--artifact DIR``, or ``configs/ml100k_xdeepfm.yaml``
   trained ``--train-epochs`` epochs into a temp directory and exported (MiniLM title vectors).
2. **Server.** ``xdeepfm serve`` as a subprocess on a free loopback port (``RankingServer``, which
   waits for ``/readyz``: artifact loaded, MiniLM warmed up), with its default limits and
   ``--server-threads`` torch threads; ``--server-arg`` adds serve options.
3. **Good requests.** ``wrk`` (``-t1 -c C -d --duration``, loopback) POSTs ``/v1/rank`` bodies from a
   Lua script, rotating over ``--bodies`` requests (an ML-100K test user + ``--candidates``
   catalogue items with known titles, ``top_k`` 10; seeded), counting responses by status class.
4. **Adversaries** (the *mixed* runs only), from Python threads in this process:
   - *huge*: back-to-back ``/v1/rank`` requests of ``--huge-candidates`` catalogue items whose
     titles are all new (a unique suffix): every title misses every cache and goes through MiniLM;
   - *slow clients*: one trickles a good body over ``--slow-ok`` s (within the server's 10 s body
     timeout: answered 200), one over ``--slow-late`` s (past it: 408, connection closed), one
     connects and sends nothing (closed by the header timeout), each in a loop;
   - *liveness*: ``GET /healthz`` every 20 ms on a keep-alive connection, in every run.
5. **Reported** per run (1 and ``--connections`` wrk connections, alone and mixed): wrk's good-request
   count, requests/s, p50/p99 latency and status classes; /healthz p50/p99/max (client side) and
   p99 (server side, access log); the huge requests' count and latency; the slow clients' answers;
   and the server's 5xx count over the whole run from its access log.

The load generators share the machine's cores with the server (loopback).

Usage (needs ``wrk`` on PATH, e.g. ``apt-get install wrk``)::

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python bench/serving_mixed.py --out docs/performance.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import select
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import cpu_model, git_revision, loadavg, run_wrk, setup, write_bodies_script, write_section  # noqa: E402
from serving_load import CONFIG, build_requests, train_and_export  # noqa: E402

from xdeepfm.server import RankingServer  # noqa: E402
from xdeepfm.serving import ScoringEngine  # noqa: E402

log = logging.getLogger("bench.serving_mixed")

HEADING = "## Ranking service under mixed load (wrk + huge requests + slow clients)"
JSON = {"Content-Type": "application/json"}

# --------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------


class Probe(threading.Thread):
    """GET /healthz every ``interval`` s on one keep-alive connection; latencies in ms."""

    def __init__(self, url: str, stop: threading.Event, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.interval, self.ms, self.failures = url, stop, interval, [], 0

    def run(self) -> None:
        import requests

        with requests.Session() as session:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    ok = session.get(f"{self.url}/healthz", timeout=10).status_code == 200
                except requests.RequestException:
                    ok = False
                if ok:
                    self.ms.append(1000 * (time.perf_counter() - t0))
                else:
                    self.failures += 1
                self.stop.wait(self.interval)


def huge_loop(url: str, item_rows: list[dict], user: dict, n: int, seed: int, stop: threading.Event, out: list) -> None:
    """Back-to-back rank requests of ``n`` items whose titles are all new; (status, seconds) into ``out``."""
    import requests

    rng = np.random.default_rng(seed)
    with requests.Session() as session:
        k = 0
        while not stop.is_set():
            chosen = rng.choice(len(item_rows), n, replace=len(item_rows) < n)
            candidates = [{**item_rows[j], "title": f"{item_rows[j]['title']} [new {seed}-{k}-{i}]"} for i, j in enumerate(chosen)]
            body = json.dumps({"user": user, "candidates": candidates, "top_k": 10}).encode()
            t0 = time.perf_counter()
            try:
                status = session.post(f"{url}/v1/rank", data=body, headers=JSON, timeout=120).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            out.append((status, time.perf_counter() - t0))
            k += 1


def _status(data: bytes) -> int | str:
    match = re.match(rb"HTTP/1\.1 (\d{3})", data)
    return int(match.group(1)) if match else ("closed" if not data else "garbled")


def _read_until_closed(sock: socket.socket, limit: float) -> bytes:
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def slow_loop(url: str, body: bytes, seconds: float, stop: threading.Event, out: list) -> None:
    """Send ``body`` in 20 pieces over ``seconds`` (keep-alive off), again and again; statuses into ``out``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    while not stop.is_set():
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            sock.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
            step, sent = -(-len(body) // 20), 0
            try:
                while sent < len(body):
                    if stop.wait(seconds / 20):
                        return  # the run is over: hang up mid-body
                    if select.select([sock], [], [], 0)[0]:
                        break  # answered (408) before the body was done
                    sock.sendall(body[sent : sent + step])
                    sent += step
            except (BrokenPipeError, ConnectionResetError):
                pass
            out.append(_status(_read_until_closed(sock, 60)))


def silent_loop(url: str, stop: threading.Event, out: list) -> None:
    """Connect, send nothing, time how long until the server closes; into ``out``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    while not stop.is_set():
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            t0 = time.perf_counter()
            data = _read_until_closed(sock, 60)
            out.append((_status(data), time.perf_counter() - t0))


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


def access_entries(log_path: Path) -> list[dict]:
    return [json.loads(line.split("xdeepfm.access: ", 1)[1]) for line in log_path.read_text().splitlines()
            if "xdeepfm.access: " in line]


def one_run(server: RankingServer, script: Path, connections: int, mixed: bool, args, item_rows, user, good_body) -> dict:
    n_before = len(access_entries(server.log_path))
    stop = threading.Event()
    probe = Probe(server.url, stop)
    huge: list = []
    slow_ok: list = []
    slow_late: list = []
    silent: list = []
    threads = [probe]
    if mixed:
        threads += [
            threading.Thread(target=huge_loop, args=(server.url, item_rows, user, args.huge_candidates,
                                                     args.seed + connections, stop, huge), daemon=True),
            threading.Thread(target=slow_loop, args=(server.url, good_body, args.slow_ok, stop, slow_ok), daemon=True),
            threading.Thread(target=slow_loop, args=(server.url, good_body, args.slow_late, stop, slow_late), daemon=True),
            threading.Thread(target=silent_loop, args=(server.url, stop, silent), daemon=True),
        ]
    load_before = loadavg()
    for t in threads:
        t.start()
    time.sleep(1.0 if mixed else 0.2)  # the huge request is in flight before wrk starts
    wrk = run_wrk(server.url, script, connections, args.duration)
    stop.set()
    for t in threads:
        t.join(180)
    time.sleep(0.5)  # the last access-log lines
    entries = access_entries(server.log_path)[n_before:]
    server_5xx = [e for e in entries if e["status"] >= 500]
    healthz_server = [e["ms"] for e in entries if e["path"] == "/healthz"]
    ms = np.array(probe.ms)
    return {
        "connections": connections, "mixed": mixed, "wrk": wrk, "load_before": load_before, "load_after": loadavg(),
        "liveness": {"n": len(ms), "failures": probe.failures, "p50": float(np.percentile(ms, 50)),
                     "p99": float(np.percentile(ms, 99)), "max": float(ms.max()),
                     "server_p99": float(np.percentile(healthz_server, 99)) if healthz_server else float("nan"),
                     "server_max": max(healthz_server, default=float("nan"))},
        "huge": {"n": len(huge), "statuses": _counts(s for s, _ in huge),
                 "median_s": float(np.median([s for _, s in huge])) if huge else float("nan"),
                 "max_s": max((s for _, s in huge), default=float("nan"))},
        "slow_ok": _counts(slow_ok), "slow_late": _counts(slow_late),
        "silent": {"statuses": _counts(s for s, _ in silent),
                   "closed_after_s": float(np.median([s for _, s in silent])) if silent else float("nan")},
        "server_requests": len(entries), "server_5xx": len(server_5xx),
        "server_statuses": _counts(e["status"] for e in entries),
    }


def _counts(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"


def render(r: dict) -> str:
    a = r["args"]
    lines = [
        f"Regenerate with `{r['command']}` (from the repository root, `HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1`; needs `wrk`).",
        "",
        f"- Date: {r['date']}; git revision: {r['git']}",
        f"- Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores (shared with other jobs); torch "
        f"{r['machine']['torch']}, Python {r['machine']['python']}, {r['machine']['wrk']}. Server: `xdeepfm serve` "
        f"with `{' '.join(['--threads', str(a['server_threads']), *a['server_arg']])}` and otherwise the default limits "
        f"({r['limits_note']}); the load generators (wrk, 1 thread; this bench's Python threads) run on the same cores.",
        f"- Model: {r['artifact_note']}. Good requests: {a['bodies']} bodies, each an ML-100K test user + "
        f"{a['candidates']} catalogue items with known titles, `top_k` 10 (seed {a['seed']}).",
        f"- Mixed runs add: back-to-back requests of {a['huge_candidates']} catalogue items whose titles are all new "
        f"(each encoded by MiniLM on the server's encoding thread); a client trickling a good body over {a['slow_ok']:g} s "
        f"(within the 10 s body timeout) and one over {a['slow_late']:g} s (past it), each in a loop; a client that "
        "connects and sends nothing, in a loop. Every run: `GET /healthz` every 20 ms on a keep-alive connection.",
        f"- Each run: {a['duration']:.0f} s of wrk; the figures are from this one run.",
        "",
        "| wrk conns | load | good req | good req/s | good p50 ms | good p99 ms | good non-2xx | /healthz p50 / p99 / max ms "
        "| /healthz server p99 / max ms | huge requests (median s) | slow clients (in time / late / silent) | server 5xx |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for run in r["runs"]:
        w, live = run["wrk"], run["liveness"]
        rps = w["requests"] / (w["duration_us"] / 1e6)
        non2xx = w["s4xx"] + w["s5xx"] + w["other"] + w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"]
        huge = (f"{run['huge']['n']} ({_statuses(run['huge']['statuses'])}; {run['huge']['median_s']:.1f} s)"
                if run["mixed"] else "-")
        slow = (f"{_statuses(run['slow_ok'])} / {_statuses(run['slow_late'])} / closed after "
                f"{run['silent']['closed_after_s']:.1f} s" if run["mixed"] else "-")
        lines.append(
            f"| {run['connections']} | {'mixed' if run['mixed'] else 'wrk alone'} | {w['requests']:,} | {rps:.1f} | "
            f"**{w['p50_us'] / 1000:.1f}** | **{w['p99_us'] / 1000:.1f}** | {non2xx} | {live['p50']:.1f} / **{live['p99']:.1f}** / "
            f"{live['max']:.1f} | {live['server_p99']:.2f} / {live['server_max']:.2f} | {huge} | {slow} | **{run['server_5xx']}** |")
    total_5xx = sum(run["server_5xx"] for run in r["runs"])
    lines += [
        "",
        f"**Server 5xx over all runs: {total_5xx}** (from the server's access log, every request of every client). "
        "Good-request latency is wrk's (request written to response read); /healthz latency is measured by a Python "
        "client on the same cores (its own scheduling delay included); the server-side figure is the access log's.",
        "Load average (1/5/15 min) before / after each run: "
        + "; ".join(f"{run['connections']} conn. {'mixed' if run['mixed'] else 'alone'}: {run['load_before']} -> "
                    f"{run['load_after']}" for run in r["runs"]) + ".",
        f"wrk command per run: `{r['runs'][0]['wrk']['command']}` (Lua script written by the bench: rotates the bodies, "
        "counts statuses).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifact", type=Path, help="serve this export (default: train and export ML-100K first)")
    p.add_argument("--train-epochs", type=int, default=1)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of wrk per run")
    p.add_argument("--connections", type=int, default=4, help="wrk connections of the second pair of runs (the first: 1)")
    p.add_argument("--bodies", type=int, default=50, help="distinct good request bodies wrk rotates over")
    p.add_argument("--candidates", type=int, default=100, help="candidates per good request")
    p.add_argument("--huge-candidates", type=int, default=1000, help="candidates (all with new titles) per huge request")
    p.add_argument("--slow-ok", type=float, default=4.0, help="seconds over which the in-time slow client sends its body")
    p.add_argument("--slow-late", type=float, default=15.0, help="seconds over which the late slow client sends its body")
    p.add_argument("--server-threads", type=int, default=1, help="torch threads of the server process (serve --threads)")
    p.add_argument("--server-arg", action="append", default=[], help="an extra serve option (repeatable, e.g. --workers=2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="markdown file whose serving_mixed section is rewritten")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        p.error("wrk is not on PATH (Debian: apt-get install wrk)")
    setup(1, quiet=("xdeepfm",))
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("[")[0].strip()

    with tempfile.TemporaryDirectory(prefix="serving_mixed_") as tmp:
        tmp = Path(tmp)
        if args.artifact is None:
            artifact = train_and_export(tmp, args.train_epochs)
            note = (f"`{CONFIG}` trained {args.train_epochs} epoch(s) by this bench, exported with `xdeepfm export` "
                    "(10 input fields incl. the 384-d MiniLM title vector)")
        else:
            artifact, note = args.artifact, f"artifact `{args.artifact}`"
        engine = ScoringEngine.load(artifact)
        good = build_requests(engine, args.bodies, args.candidates, args.seed)
        script = write_bodies_script(tmp, "rank", good)
        catalogue = build_requests(engine, 1, min(args.huge_candidates, 1682), args.seed + 1)[0]
        item_rows, user = catalogue["candidates"], good[0]["user"]
        good_body = json.dumps(good[0]).encode()
        del engine
        server = RankingServer(artifact, log_path=tmp / "serve.log", args=["--threads", str(args.server_threads), *args.server_arg])
        runs = []
        with server:
            limits = server.model()["limits"]
            for connections in (1, args.connections):
                for mixed in (False, True):
                    log.info("run: %d wrk connection(s), %s", connections, "mixed" if mixed else "wrk alone")
                    runs.append(one_run(server, script, connections, mixed, args, item_rows, user, good_body))
                    log.info("  %s", json.dumps({k: runs[-1][k] for k in ("liveness", "huge", "server_5xx")}))
    limits_note = ", ".join(f"{k} {limits[k]}" for k in ("workers", "queue", "encode_queue", "request_timeout_s",
                                                           "body_timeout_s", "header_timeout_s", "keep_alive_s", "text_lru"))
    shown = ["python", "bench/serving_mixed.py", *(argv if argv is not None else sys.argv[1:])]
    results = {
        "command": shlex.join(shown), "args": vars(args) | {"artifact": str(args.artifact) if args.artifact else None},
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "git": git_revision(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(), "wrk": wrk_version},
        "artifact_note": note, "limits_note": limits_note, "runs": runs,
    }
    text = render(results)
    if args.out:
        write_section(Path(args.out), HEADING, "serving_mixed", text)
        log.info("wrote the serving_mixed section of %s", args.out)
    print(text)
    return 0 if all(run["server_5xx"] == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
