"""The ``mmfusion`` command's surface: every subcommand listed, every option documented, every entry
point naming itself in its help, mistakes as one error line and exit code 2."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmapp.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in ("train", "evaluate", "predict", "extract", "export", "serve", "store", "ingest", "ablate", "compare", "synth",
                 "synth-video", "report", "explain", "demo"):
        assert name in COMMANDS and f"    {name}" in text, name


def test_every_option_of_every_subcommand_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subparsers) == set(COMMANDS)
    missing = [f"mmfusion {name} {action.option_strings[0]}" for name, sub in subparsers.items() for action in sub._actions
               if action.option_strings and action.dest != "help" and not action.help]
    assert not missing, "options without help: " + ", ".join(missing)


def test_every_entry_point_names_itself_in_its_help():
    section = (ROOT / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = re.findall(r"^([\w-]+) = ", section, flags=re.M)
    assert {"mmfusion", "mmfusion-demo", "mmfusion-train", "mmfusion-evaluate", "synthmosi", "xdeepfm"} <= set(scripts)
    commands = {name: [str(VENV_BIN / name), "--help"] for name in scripts}
    commands.update({script: [sys.executable, str(ROOT / script), "--help"] for script in ("train.py", "evaluate.py")})
    running = {name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, argv in commands.items()}  # all at once: each spends its time importing torch
    for name, proc in running.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, (name, err[-2000:])
        assert out.startswith(f"usage: {name} "), (name, out[:200])


def test_a_mistake_is_one_error_line_and_exit_code_2(tmp_path, caplog):
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: config file not found" in caplog.text
    assert main(["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "a")]) == 2
    assert "best.safetensors: checkpoint not found" in caplog.text
    assert main(["train", "--out", str(tmp_path / "run")]) == 2  # neither a config nor a run to resume
    assert "--config is required" in caplog.text
