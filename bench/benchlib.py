"""What every bench shares: a description of the machine and the rewrite of its own doc section."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mmcore.files import write_text  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    try:
        run = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()  # noqa: E731
        rev, dirty = run("rev-parse", "--short", "HEAD"), run("status", "--porcelain")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{rev} (with uncommitted changes in the work tree)" if dirty else rev


def setup(threads: int, level: int = logging.INFO, quiet: tuple[str, ...] = ()) -> None:
    """What every bench does first: log with timestamps (``quiet`` loggers at WARNING), never reach a
    model hub, and fix torch's intra-op threads for the whole run."""
    import torch

    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(threads)


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def write_section(doc: Path, heading: str, name: str, section: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``doc``, atomically.

    A missing file is created with just this section; a file without the markers gets it appended.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = f"{head}{start}\n{section.rstrip()}\n{end}{rest.split(end, 1)[1]}"
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + f"{heading}\n\n{start}\n{section.rstrip()}\n{end}\n"
    write_text(doc, text)


BODIES_LUA = r"""
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local threads = {}
local i = 0
function setup(thread) table.insert(threads, thread) end
function init(args) ok, s2, s4, s5, other = 0, 0, 0, 0, 0 end
function request()
  i = i %% #bodies + 1
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json"}, bodies[i])
end
function response(status, headers, body)
  if status == 200 then ok = ok + 1 end
  if status >= 500 then s5 = s5 + 1 elseif status >= 400 then s4 = s4 + 1
  elseif status >= 200 and status < 300 then s2 = s2 + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local tok, t2, t4, t5, to = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    tok = tok + t:get("ok"); t2 = t2 + t:get("s2"); t4 = t4 + t:get("s4"); t5 = t5 + t:get("s5")
    to = to + t:get("other")
  end
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%.0f, "duration_us": %%.0f, "ok": %%.0f, "bad": %%.0f, ' ..
    '"s2xx": %%.0f, "s4xx": %%.0f, "s5xx": %%.0f, "other": %%.0f, "errors": %%.0f, "connect_errors": %%.0f, ' ..
    '"read_errors": %%.0f, "write_errors": %%.0f, "timeouts": %%.0f, "p50_us": %%.0f, "p90_us": %%.0f, ' ..
    '"p99_us": %%.0f, "max_us": %%.0f}\n', summary.requests, summary.duration, tok, t2 + t4 + t5 + to - tok,
    t2, t4, t5, to, e.connect + e.read + e.write + e.timeout, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def write_bodies_script(folder: Path, name: str, bodies: list[dict], path: str = "/v1/rank") -> Path:
    """``folder/name.lua``: wrk POSTs the JSON ``bodies`` (kept in ``folder/name.jsonl``) to ``path`` in turn,
    counts 200s against the rest (``ok`` / ``bad``) and each status class (``s2xx`` ``s4xx`` ``s5xx`` ``other``), and prints
    the ``WRKJSON`` line ``run_wrk`` reads (socket errors in total and by kind; p50 / p90 / p99 / max latency)."""
    lines = folder / f"{name}.jsonl"
    lines.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    script = folder / f"{name}.lua"
    script.write_text(BODIES_LUA % {"bodies": lines, "path": path})
    return script


def run_wrk(url: str, script: Path, connections: int, duration: float, timeout: str = "60s",
            path: str = "/v1/rank") -> dict:
    """``wrk -t1`` on ``url + path`` with a Lua ``script`` whose ``done`` prints one ``WRKJSON {...}`` line;
    returns that object plus ``rps`` and ``command`` (the wrk command line, with the script and port generalised)."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:.0f}s", "--timeout", timeout, "-s", str(script),
               f"{url}{path}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
    match = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
    if out.returncode != 0 or not match:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["command"] = shlex.join(command[:-3] + ["-s", f"{path.rsplit('/', 1)[-1]}.lua", f"http://127.0.0.1:PORT{path}"])
    return result
