"""The README as a contract: every command block runs, as written or in a stated fast variant.

Each ```bash block of README.md runs as one bash script (``set -e``) in a sandbox directory laid out
like a checkout (``.venv``, ``configs/``, ``train.py``, ``evaluate.py``, a ``datasets/`` with the tiny
SynthMOSI, a ``my_videos/`` folder of real mp4 clips with ``meta.csv``). A command runs as it is
written, with only these changes, so that the suite stays short:

- ``--set`` words appended that shrink a run (1 epoch; the tiny SynthMOSI instead of the MOSI-sized
  one; 3,000 MovieLens ratings; one seed and one variant of a study), see :func:`fast_variant`;
- the MOSI-sized pickle's name replaced by the tiny one's, the service's port by a free one, and
  ``curl -s`` by ``curl -sf`` (a 4xx/5xx answer fails the block).

A README command that no rule covers fails :func:`test_every_readme_command_is_covered`; the few
that are not run say why in ``NOT_RUN``. The ```python block runs as it stands.
"""

from __future__ import annotations

import ast
import csv
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from mmfusion.extract.synthclip import write_clip

pytestmark = pytest.mark.xdist_group("tiny_demo")  # one worker builds the tiny main job (tests/mmapp/conftest.py) for all its users

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TINY = "datasets/synthmosi_tiny_s0.pkl"
SHRINK_SENTIMENT = f"--set data.path={TINY} --set data.synthetic.size=tiny --set train.epochs=1"
SHRINK_RANKING = "--set data.max_rows=3000 --set train.epochs=1"

NOT_RUN = {
    "bash .ci/setup-env && .venv/bin/mmfusion demo": "the main job: tests/mmapp/test_demo.py runs it on a small catalogue",
    "bash .ci/setup-env && HF_HUB_OFFLINE=1 .venv/bin/python -m pytest": "the test suite itself",
    ".venv/bin/tensorboard --logdir runs/": "a server that runs until stopped; its event files are read back in "
                                            "tests/mmfusion/test_training.py::test_tensorboard_tags",
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def strip_comment(command: str) -> str:
    """The command without a trailing ``# ...`` comment (a ``#`` outside quotes, after a space)."""
    for match in re.finditer(r"\s#", command):
        head = command[: match.start()]
        if head.count("'") % 2 == 0 and head.count('"') % 2 == 0:
            return head.rstrip()
    return command


def fast_variant(command: str) -> str | None:
    """The command as the test runs it, or None when no rule covers it."""
    if any(command.startswith(prefix) for prefix in NOT_RUN):
        return ""
    shrink = ""
    if re.search(r"(mmfusion train|train\.py) --config configs/synth(mosi|video)_", command):
        shrink = " --set train.epochs=1" if "--set data.path=" in command else " " + SHRINK_SENTIMENT
    elif re.search(r"(mmfusion train|train\.py) --config configs/ml100k_xdeepfm_shards", command):
        shrink = " --set train.epochs=1"
    elif re.search(r"(mmfusion train|train\.py) --config configs/ml100k_", command):
        shrink = " " + SHRINK_RANKING
    elif "mmfusion ablate" in command:
        shrink = f" --seeds 0 --variants no_uff {SHRINK_SENTIMENT}"
    elif "mmfusion compare" in command:
        shrink = f" --seeds 0 --splits random --variants ours_notext {SHRINK_RANKING}"
    elif not re.search(r"(mmfusion (train|evaluate|predict|extract|export|serve|report|store|ingest|recommender)|train\.py|"
                       r"-m xdeepfm\.data\.shards|^curl )", command):
        return None
    command = strip_comment(command)  # a trailing comment would swallow the words appended
    background = command.endswith("&")
    command = command.rstrip("& ").replace("datasets/synthmosi_mosi_s0.pkl", TINY).replace("curl -s ", "curl -sf ")
    return command + shrink + (" &" if background else "")


def test_every_readme_command_is_covered():
    found = [c for language in ("bash",) for block in blocks(language) for c in commands(block)]
    assert len(found) >= 20, "the README's command blocks were not found"
    uncovered = [c for c in found if fast_variant(c) is None]
    assert not uncovered, "README commands no rule of tests/mmapp/test_readme.py covers:\n" + "\n".join(uncovered)
    assert len(blocks("python")) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SPLIT_OF = ["train"] * 5 + ["valid"] * 2 + ["test"] * 2


def make_my_videos(folder: Path) -> None:
    """Nine small labelled mp4 clips and their meta.csv (the README's "your own videos" recipe)."""
    folder.mkdir()
    rows = []
    for i in range(9):
        label = [-2.0, -1.0, 1.5][i % 3]
        write_clip(folder / f"v{i}.mp4", 1.0, tone_hz=180.0 + 40 * i, hue=(i % 3) / 3)
        rows.append({"video": f"v{i}.mp4", "id": f"v{i}", "text": ["Awful kettle", "Weak lamp", "Great blender"][i % 3],
                     "label": label, "split": SPLIT_OF[i]})
    with open(folder / "meta.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_synthmosi, tiny_demo) -> Path:
    """A checkout-like folder; ``runs/demo`` and ``datasets/ecommerce_video`` are the tiny main job's."""
    root = tmp_path_factory.mktemp("readme")
    for name in (".venv", "configs", "train.py", "evaluate.py"):
        (root / name).symlink_to(ROOT / name)
    (root / "datasets").mkdir()
    (root / TINY).symlink_to(tiny_synthmosi)
    (root / "datasets/ecommerce_video").symlink_to(tiny_demo.catalogue)
    (root / "runs").mkdir()
    (root / "runs/demo").symlink_to(tiny_demo.out)
    (root / "docs").mkdir()
    make_my_videos(root / "my_videos")
    return root


def run_block(block: str, sandbox: Path, timeout: int) -> subprocess.CompletedProcess:
    port = free_port()
    lines = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for command in commands(block):
        variant = fast_variant(command)
        if not variant:
            continue
        variant = variant.replace("--port 8000", f"--port {port}").replace("localhost:8000", f"127.0.0.1:{port}")
        lines.append(variant)
        if variant.rstrip().endswith("&"):  # a server: wait until it answers
            lines.append(f"for i in $(seq 120); do curl -sf 127.0.0.1:{port}/healthz >/dev/null && break; sleep 0.5; done")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "-c", "\n".join(lines)], cwd=sandbox, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_readme_bash_blocks_run(sandbox):
    for block in blocks("bash"):
        if all(not fast_variant(c) for c in commands(block)):
            continue
        proc = run_block(block, sandbox, timeout=600)
        assert proc.returncode == 0, f"README block failed:\n{block}\n--- stderr ---\n{proc.stderr[-4000:]}"
    assert (sandbox / "runs" / "default" / "metrics.json").is_file()
    assert (sandbox / "artifacts" / "ranker" / "manifest.json").is_file()
    assert (sandbox / "semantics.npz").is_file()


def test_readme_python_block_runs(sandbox, monkeypatch, capsys):
    monkeypatch.chdir(sandbox)
    (code,) = blocks("python")
    exec(compile(code, str(README) + ":python", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\d\.\d{4}", printed[0])  # the test MAE
    assert printed[1].startswith("['M' 'T' 'A' 'V'] (32, 4) (32, 64)")
    assert (sandbox / "artifacts" / "api_tiny" / "manifest.json").is_file()
    ranked, recommended, channels = (ast.literal_eval(part + "]") for part in printed[3].rstrip("]").split("] "))
    assert len(ranked) == 3 and len(recommended) == 3 and set(channels) <= {"popularity", "itemcf", "two_tower"}
