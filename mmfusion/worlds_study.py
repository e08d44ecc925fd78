"""The recipe study across SynthMOSI worlds: candidates × worlds × seeds, scored by the gap recovered.

    python -m mmfusion.worlds_study --config configs/worlds_study.yaml --out runs/worlds \
        [--doc docs/results_worlds.md] [--worlds default trend] [--candidates previous] [--report-only]

A candidate is a named set of overrides of one base recipe (``recipe:``, a sentiment YAML); every
candidate is trained in every world (``mmfusion.data.worlds``, docs/synthmosi_worlds.md) with the
same overrides (no world gets defaults of its own), as its full model and as the variants of
``mmfusion.ablate.VARIANTS`` the study lists (``text_only`` always: the gap is measured from it).
Runs live in ``<out>/<world>/<candidate>/<variant>/seed<k>`` and are trained with
``mmfusion.ablate.train_once``: a finished run (``metrics.json``) is read back, not retrained, and
refused when its stored config no longer matches the candidate's. A text-only run is one model for
every world with the same text and labels and every candidate whose overrides differ only in the
audio/vision-only keys, so it is trained once, in the first such cell (``run_home``).

Per world the references come from ``mmfusion.reference`` reports (markdown, one per world;
computed into ``<out>/references/<world>.md`` when missing and ``compute_references`` is on): the
late average of the unimodal ridges and the oracle on the hidden unimodal labels. The score of a
candidate in a world is the share of its own text-only → oracle gap that its full model recovers,

    gap(Non0_acc_2) = (full - text_only) / (oracle - text_only)
    gap(MAE)        = (text_only - full) / (text_only - oracle)

per seed, then averaged over seeds; undefined (``n/a``) where the oracle is not better than the
text-only model. The objective is the mean over worlds of gap(Non0_acc_2). Tables go to
``<out>/results.md`` and, with ``--doc``, to the tracked file (text below ``<!-- notes -->`` kept).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mmcore.config import ConfigError, apply_overrides, build, load_yaml, merge
from mmcore.files import write_json, write_text
from mmcore.loop import RunDir
from mmcore.runtime import command_main
from mmfusion.ablate import (
    NOTES_MARKER,
    VARIANTS,
    check_output_paths,
    finished_result,
    git_revision,
    late_average_of,
    train_once,
)
from mmfusion.data.synthetic import generate, write_pickle
from mmfusion.data.worlds import WORLDS, get_world
from mmfusion.experiment import SentimentDataConfig, SentimentExperiment
from mmfusion.reference import read_reference_markdown, render_markdown, run_reference

log = logging.getLogger(__name__)

GAP_KEYS = ("Non0_acc_2", "MAE")  # the objective's metric first
LOWER_IS_BETTER = frozenset({"MAE"})
OBJECTIVE_KEY = "Non0_acc_2"
# the reference report's predictors the study reads (``mmfusion.reference``), by their label's prefix
REFERENCE_ROWS = {"text_ridge": "(a)", "late_average": "(d)", "oracle": "(f)"}
UNIMODAL = ("text_only", "audio_only", "vision_only")
# model keys only the audio / vision branches read: a text-only model is the same whatever they are
AUDIO_VISION_KEYS = ("audio_encoder", "vision_encoder", "encoder_layers", "conv_kernel", "conv_dilations",
                     "frame_stride", "input_norm", "input_deltas", "modality_dropout")


@dataclass
class WorldsStudy:
    """``configs/worlds_study.yaml``: what the study trains and where it reads its references."""

    recipe: str  # the sentiment YAML every candidate overrides (relative to the study file)
    candidates: dict[str, dict[str, Any]]  # name -> overrides of the recipe (nested, e.g. {model: {...}})
    previous: str = "previous"  # the candidate that is the shipped default before the study (compared with)
    shipped: str | None = None  # the candidate the study chose, shipped as the default recipe (None: not yet)
    worlds: list[str] = field(default_factory=lambda: list(WORLDS))
    seeds: list[int] = field(default_factory=lambda: [0])
    variants: list[str] = field(default_factory=lambda: ["full", "text_only"])  # mmfusion.ablate.VARIANTS
    # the data file of a non-default world ({world}, {size}, {seed} of the recipe's data.synthetic);
    # the default world keeps the recipe's data.path
    data_path: str = "datasets/synthmosi_{size}_{world}_s{seed}.pkl"
    references: str | None = None  # reference report per world ({world}); None: <out>/references/{world}.md
    compute_references: bool = True  # run mmfusion.reference (without its early-fusion MLP) when one is missing
    task: str = "worlds_study"

    def __post_init__(self) -> None:
        if self.task != "worlds_study":
            raise ConfigError(f"task: {self.task!r} is not 'worlds_study'")
        if not self.candidates:
            raise ConfigError("candidates: expected at least one named candidate")
        for key in ("previous", "shipped"):
            name = getattr(self, key)
            if name is not None and name not in self.candidates:
                raise ConfigError(f"{key}: {name!r} is not one of the candidates {list(self.candidates)}")
        for i, world in enumerate(self.worlds):
            if world not in WORLDS:
                raise ConfigError(f"worlds[{i}]: {world!r} is not one of {list(WORLDS)}")
        for i, variant in enumerate(self.variants):
            if variant not in VARIANTS:
                raise ConfigError(f"variants[{i}]: {variant!r} is not one of {list(VARIANTS)}")
        if not {"full", "text_only"} <= set(self.variants):
            raise ConfigError(f"variants: {self.variants} must hold 'full' and 'text_only' (the gap is measured from them)")
        for name, overrides in self.candidates.items():
            if not isinstance(overrides, dict):
                raise ConfigError(f"candidates.{name}: expected a mapping of overrides, got {type(overrides).__name__}")


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[WorldsStudy, dict]:
    """The study config and its recipe (a raw mapping, with the recipe's own ``base:`` merged);
    every candidate × world is built once here, so a bad override fails before any training."""
    path = Path(path)
    study = build(WorldsStudy, apply_overrides(load_yaml(path), overrides), where=str(path))
    recipe = load_yaml(path.parent / study.recipe)
    if (recipe.get("data") or {}).get("synthetic") is None:
        raise ConfigError(f"{path}: recipe {study.recipe}: data.synthetic is missing (the worlds are SynthMOSI's)")
    for name in study.candidates:
        for world in study.worlds:
            for variant in study.variants:
                build(SentimentExperiment, run_config(study, recipe, name, world, variant, study.seeds[0]),
                      where=f"{path}: candidates.{name} (world {world}, variant {variant})")
    return study, recipe


def world_data(study: WorldsStudy, recipe: dict, world: str) -> dict:
    """The recipe's ``data`` section pointed at ``world``'s SynthMOSI file."""
    data = copy.deepcopy(recipe["data"])
    synthetic = data["synthetic"]
    synthetic["world"] = world
    if world != "default":
        data["path"] = study.data_path.format(world=world, size=synthetic.get("size", "mosi"),
                                              seed=synthetic.get("seed", 0))
    return data


def run_config(study: WorldsStudy, recipe: dict, candidate: str, world: str, variant: str, seed: int) -> dict:
    """The raw sentiment config of one run: recipe, then the candidate, then the world's data, then the
    variant's model overrides and the seed."""
    raw = copy.deepcopy(merge(recipe, study.candidates[candidate]))  # merge shares the sections it does not touch
    raw["data"] = world_data(study, raw, world)
    raw.setdefault("model", {}).update(VARIANTS[variant][1])
    raw.setdefault("train", {})["seed"] = seed
    return raw


def ensure_world_data(study: WorldsStudy, recipe: dict, world: str) -> None:
    """Generate ``world``'s data file when it is missing (before any run of it is timed)."""
    data = build(SentimentDataConfig, world_data(study, recipe, world), where=f"world {world} data")
    if not Path(data.path).exists():
        spec = data.synthetic
        log.info("generating SynthMOSI (%s, world %s, seed %d) into %s", spec.size, world, spec.seed, data.path)
        write_pickle(generate(spec.size, spec.seed, aligned=spec.aligned, text_features=spec.text_features, world=world),
                     data.path)


def run_dir(out: Path, world: str, candidate: str, variant: str, seed: int) -> Path:
    return out / world / candidate / variant / f"seed{seed}"


def _text_only_identity(raw: dict) -> str:
    model = {k: v for k, v in raw.get("model", {}).items() if k not in AUDIO_VISION_KEYS}
    return json.dumps({**raw, "model": model}, sort_keys=True, default=str)


def run_home(study: WorldsStudy, recipe: dict, candidate: str, world: str, variant: str) -> tuple[str, str]:
    """(world, candidate) of the directory a run lives in: its own, except for a text-only run, which is
    trained once where it is first met: in the world whose text and labels it reads
    (``World.text_world``), under the first candidate (config order) whose text-only config is the
    same up to the audio/vision-only keys (``AUDIO_VISION_KEYS``)."""
    if variant != "text_only":
        return world, candidate
    home = get_world(world).text_world
    mine = _text_only_identity(run_config(study, recipe, candidate, home, variant, 0))
    owner = next(c for c in study.candidates
                 if _text_only_identity(run_config(study, recipe, c, home, variant, 0)) == mine)
    return home, owner


def run_one(study: WorldsStudy, recipe: dict, out: Path, candidate: str, world: str, variant: str,
            seed: int) -> dict | None:
    """Train one run (or read its finished result); its wall time goes to ``study_run.json`` beside it.
    A run that another live process is training is skipped (None): two studies can share ``out``."""
    world, candidate = run_home(study, recipe, candidate, world, variant)
    path = run_dir(out, world, candidate, variant, seed)
    finished = (path / "metrics.json").exists()
    state = RunDir(path).read_state()
    if not finished and state is not None and state["status"] == "running":  # read_state checked its pid
        log.warning("%s: process %s is training this run now; skipped here", path, state.get("pid"))
        return None
    start = time.perf_counter()
    result = train_once(run_config(study, recipe, candidate, world, variant, seed), path,
                        where=f"worlds study {world}/{candidate}/{variant}/seed{seed}")
    if not finished:
        write_json(path / "study_run.json", {"wall_s": round(time.perf_counter() - start, 1),
                                             "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                             "cpu_count": os.cpu_count()})
    return result


def study_result(study: WorldsStudy, recipe: dict, out: Path, candidate: str, world: str, variant: str,
                 seed: int) -> dict | None:
    """A finished run's ``metrics.json`` (plus its wall time when the study trained it), else None;
    a run of another config than the candidate's is refused (``mmfusion.ablate.finished_result``)."""
    world, candidate = run_home(study, recipe, candidate, world, variant)
    path = run_dir(out, world, candidate, variant, seed)
    result = finished_result(run_config(study, recipe, candidate, world, variant, seed), path,
                             where=f"worlds study {world}/{candidate}/{variant}/seed{seed}")
    if result is not None and (path / "study_run.json").exists():
        result["wall_s"] = json.loads((path / "study_run.json").read_text())["wall_s"]
    return result


def reference_path(study: WorldsStudy, out: Path, world: str) -> Path:
    return Path(study.references.format(world=world)) if study.references else out / "references" / f"{world}.md"


def reference(study: WorldsStudy, recipe: dict, out: Path, world: str, compute: bool) -> dict[str, dict] | None:
    """``{"text_ridge"|"late_average"|"oracle": metrics}`` of ``world``'s reference report; the report is
    computed first when missing and ``compute`` is on, else None."""
    path = reference_path(study, out, world)
    if not path.exists():
        if not compute:
            return None
        data = world_data(study, recipe, world)["path"]
        log.info("reference predictors of world %s -> %s", world, path)
        seed = recipe["data"]["synthetic"].get("seed", 0)
        results = run_reference(data, seed=seed, early_fusion_mlp=False)
        write_text(path, render_markdown(results, f"mmfusion.reference.run_reference({data!r}, seed={seed}, "
                                                  "early_fusion_mlp=False) (python -m mmfusion.worlds_study)", data, seed))
    rows = read_reference_markdown(path)
    picked = {}
    for name, prefix in REFERENCE_ROWS.items():
        matches = [metrics for label, metrics in rows.items() if label.startswith(prefix)]
        if not matches:
            raise ValueError(f"{path}: no '{prefix} ...' row (expected the report of python -m mmfusion.reference)")
        picked[name] = matches[0]
    return picked


# --- the score ----------------------------------------------------------------------------------

def gap_recovered(full: float, text_only: float, oracle: float, key: str) -> float | None:
    """The share of the text-only → oracle gap on ``key`` that ``full`` recovers (1 = the oracle,
    0 = no better than text alone, < 0 = worse); None where the oracle is not better than text-only."""
    if key in LOWER_IS_BETTER:
        full, text_only, oracle = -full, -text_only, -oracle
    headroom = oracle - text_only
    if not headroom > 0:
        return None
    return (full - text_only) / headroom


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def _std(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.std(defined)) if defined else None


@dataclass
class Cell:
    """One candidate in one world: its runs per variant (finished seeds only) and its gap per seed."""

    runs: dict[str, list[dict]]  # variant -> finished runs, in seed order
    seeds: list[int]  # the seeds with both full and text_only finished
    gaps: dict[str, list[float | None]]  # GAP_KEYS -> per seed in ``seeds``
    model_late_average: list[dict] = field(default_factory=list)  # mean of its own T/A/V-only models

    def metric(self, variant: str, key: str, split: str = "test") -> list[float]:
        return [r[split][key] for r in self.runs.get(variant, []) if r[split].get(key) is not None]

    def gap(self, key: str, seeds: list[int] | None = None) -> float | None:
        """The gap on ``key`` averaged over its seeds (or over those of ``seeds`` it has)."""
        return _mean([g for s, g in zip(self.seeds, self.gaps[key]) if seeds is None or s in seeds])


def collect(study: WorldsStudy, recipe: dict, out: Path, references: dict[str, dict | None]) -> dict[str, dict[str, Cell]]:
    """``{world: {candidate: Cell}}`` from the finished runs under ``out``."""
    table: dict[str, dict[str, Cell]] = {}
    for world in study.worlds:
        table[world] = {}
        for candidate in study.candidates:
            by_seed = {v: {s: study_result(study, recipe, out, candidate, world, v, s) for s in study.seeds}
                       for v in study.variants}
            runs = {v: [r for r in by_seed[v].values() if r is not None] for v in study.variants}
            seeds = [s for s in study.seeds if by_seed["full"][s] is not None and by_seed["text_only"][s] is not None]
            gaps: dict[str, list[float | None]] = {key: [] for key in GAP_KEYS}
            ref = references.get(world)
            for s in seeds:
                for key in GAP_KEYS:
                    oracle = None if ref is None else ref["oracle"].get(key)
                    gaps[key].append(None if oracle is None else gap_recovered(
                        by_seed["full"][s]["test"][key], by_seed["text_only"][s]["test"][key], oracle, key))
            cell = Cell(runs=runs, seeds=seeds, gaps=gaps)
            if set(UNIMODAL) <= set(study.variants):
                both = [s for s in study.seeds if all(by_seed[v][s] is not None for v in UNIMODAL)]
                cell.model_late_average = [
                    late_average_of([run_dir(out, *run_home(study, recipe, candidate, world, v), v, s) for v in UNIMODAL])
                    for s in both]
            table[world][candidate] = cell
    return table


def objective(table: dict[str, dict[str, Cell]], candidate: str, key: str = OBJECTIVE_KEY,
              worlds: list[str] | None = None) -> tuple[float | None, int]:
    """The mean over worlds (all, or ``worlds``) of the candidate's gap on ``key``, and how many
    worlds it covers (those with a defined gap)."""
    gaps = [cells[candidate].gap(key) for world, cells in table.items() if worlds is None or world in worlds]
    defined = [g for g in gaps if g is not None]
    return (float(np.mean(defined)) if defined else None), len(defined)


def against_previous(study: WorldsStudy, table: dict[str, dict[str, Cell]], candidate: str,
                     key: str = OBJECTIVE_KEY) -> tuple[float | None, float | None, list[str]]:
    """The candidate's objective and the previous default's over the same runs: the worlds where both
    have a defined gap, each on the seeds the candidate has there (like with like in a partial study)."""
    ours, theirs, worlds = [], [], []
    for world, cells in table.items():
        mine, previous = cells[candidate], cells[study.previous]
        gap, previous_gap = mine.gap(key), previous.gap(key, seeds=mine.seeds)
        if gap is not None and previous_gap is not None:
            ours.append(gap)
            theirs.append(previous_gap)
            worlds.append(world)
    return (float(np.mean(ours)) if ours else None), (float(np.mean(theirs)) if theirs else None), worlds


def started(table: dict[str, dict[str, Cell]]) -> list[str]:
    """The candidates with at least one finished full + text-only pair (in any world)."""
    candidates = next(iter(table.values()), {})
    return [c for c in candidates if any(cells[c].seeds for cells in table.values())]


# --- tables -------------------------------------------------------------------------------------

def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _units(key: str) -> tuple[float, int]:
    """(scale, decimals) of ``key`` in the reference reports' units: accuracies in %, MAE and Corr raw."""
    return (1.0, 3) if key in LOWER_IS_BETTER or key == "Corr" else (100.0, 2)


def _value(values: list[float], key: str) -> str:
    """Mean (± std over seeds when there are several) in the reference reports' units."""
    if not values:
        return "n/a"
    scale, digits = _units(key)
    mean = f"{scale * np.mean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {scale * np.std(values):.{digits}f}"


def _ref(ref: dict | None, row: str, key: str) -> str:
    return "n/a" if ref is None or ref[row].get(key) is None else _value([ref[row][key]], key)


def reference_table(study: WorldsStudy, references: dict[str, dict | None]) -> str:
    lines = ["| world | what changes | text-only ridge Non0_acc_2 | late average | oracle | "
             "text-only ridge MAE | late average | oracle |", "|---" * 8 + "|"]
    for world in study.worlds:
        ref = references.get(world)
        cells = [_ref(ref, row, key) for key in GAP_KEYS for row in ("text_ridge", "late_average", "oracle")]
        lines.append(f"| {world} | {WORLDS[world].summary} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def objective_table(study: WorldsStudy, table: dict[str, dict[str, Cell]]) -> str:
    """Per candidate: the objective over all the worlds it has finished, then next to the previous
    default on the same worlds and seeds (``against_previous``), the MAE analogue, its mean full-model
    metrics and how many seeds each world has."""
    begun = started(table)
    waiting = [c for c in study.candidates if c not in begun]
    lines = [(f"Not started yet: {', '.join(waiting)}. " if waiting else "")
             + f"The previous default is `{study.previous}`"
             + (f"; the shipped default is `{study.shipped}`." if study.shipped else "."), "",
             "| candidate | overrides of the recipe | objective: mean gap recovered, Non0_acc_2 %, all its worlds (n) | "
             "seeds per world | same worlds and seeds: this candidate | the previous default | mean gap recovered, "
             "MAE %: this candidate | the previous default | mean full Non0_acc_2, its worlds | mean full MAE |",
             "|---" * 10 + "|"]
    for candidate, overrides in study.candidates.items():
        if candidate not in begun:
            continue
        score_all, n_all = objective(table, candidate)
        ours, theirs, _ = against_previous(study, table, candidate)
        ours_mae, theirs_mae, _ = against_previous(study, table, candidate, "MAE")
        worlds = [w for w, cells in table.items() if cells[candidate].seeds]
        counts = sorted({len(table[w][candidate].seeds) for w in worlds})
        means = {key: [m for m in (_mean(table[w][candidate].metric("full", key)) for w in worlds) if m is not None]
                 for key in GAP_KEYS}
        where = json.dumps(overrides, separators=(", ", ": ")) if overrides else "(the recipe as it is)"
        name = f"**{candidate}** (shipped)" if candidate == study.shipped else candidate
        seeds = f"{counts[0]}-{counts[-1]}" if len(counts) > 1 else str(counts[0])
        lines.append(f"| {name} | `{where}` | {_pct(score_all)} ({n_all}) | {seeds} | "
                     f"{_pct(ours)} | {_pct(theirs)} | {_pct(ours_mae)} | {_pct(theirs_mae)} | "
                     f"{_value([float(np.mean(means['Non0_acc_2']))] if means['Non0_acc_2'] else [], 'Non0_acc_2')} | "
                     f"{_value([float(np.mean(means['MAE']))] if means['MAE'] else [], 'MAE')} |")
    return "\n".join(lines)


def world_table(study: WorldsStudy, table: dict[str, dict[str, Cell]], references: dict[str, dict | None]) -> str:
    """Per world and candidate (with a finished run there): full, own text-only (and own late average
    when trained), the references, the gap recovered and the full model's training time."""
    own_late = set(UNIMODAL) <= set(study.variants)
    head = ["world", "candidate", "seeds"]
    for key in GAP_KEYS:
        head += [f"full {key}", "own text-only"] + (["own late avg"] if own_late else []) + \
                ["ref late avg", "oracle", f"gap {key} %"]
    head.append("full train s")
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for world, cells in table.items():
        ref = references.get(world)
        for candidate, cell in cells.items():
            if not any(cell.runs.values()):  # nothing finished here yet
                continue
            row = [world, candidate, str(len(cell.seeds))]
            for key in GAP_KEYS:
                row += [_value(cell.metric("full", key), key), _value(cell.metric("text_only", key), key)]
                if own_late:
                    row.append(_value([r["test"][key] for r in cell.model_late_average], key))
                gap_std = _std(cell.gaps[key])
                gap = _pct(cell.gap(key)) + (f" ± {100 * gap_std:.1f}" if len(cell.seeds) > 1 and gap_std is not None else "")
                row += [_ref(ref, "late_average", key), _ref(ref, "oracle", key), gap]
            walls = [r["wall_s"] for r in cell.runs.get("full", []) if "wall_s" in r]
            row.append(f"{np.mean(walls):.0f}" if walls else "n/a")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def shipped_table(study: WorldsStudy, table: dict[str, dict[str, Cell]], references: dict[str, dict | None]) -> str:
    """Per world, the shipped default against what it must beat: its own text-only model, its own late
    average (when trained) and the reference late average (margins in points / MAE), and the previous
    default, on Non0_acc_2 and MAE (mean over the seeds each has)."""
    if study.shipped is None:
        return "(no candidate is shipped yet: `shipped:` in the study config)"
    head = ["world", "seeds"]
    for key in GAP_KEYS:
        head += [f"shipped {key}", "- own text-only", "- own late avg", "- ref late avg", "previous default",
                 "- previous"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for world, cells in table.items():
        cell, previous, ref = cells[study.shipped], cells[study.previous], references.get(world)
        if not cell.seeds:
            continue
        row = [world, str(len(cell.seeds))]
        for key in GAP_KEYS:
            scale, digits = _units(key)
            full = _mean(cell.metric("full", key))
            others = [_mean(cell.metric("text_only", key)),
                      _mean([r["test"][key] for r in cell.model_late_average]),
                      None if ref is None else ref["late_average"].get(key)]
            prev = _mean(previous.metric("full", key))
            diff = lambda other: "n/a" if other is None else f"{scale * (full - other):+.{digits}f}"  # noqa: E731
            row += [_value(cell.metric("full", key), key), *(diff(o) for o in others),
                    _value(previous.metric("full", key), key), diff(prev)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def variants_table(study: WorldsStudy, table: dict[str, dict[str, Cell]]) -> str:
    """The other variants (ablations) per world and candidate, next to the full model."""
    others = [v for v in study.variants if v not in ("full", "text_only")]
    if not others:
        return "(the study trains only the full and text-only variants)"
    head = ["world", "candidate"] + [f"{v} {key}" for v in ["full", *others] for key in GAP_KEYS]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for world, cells in table.items():
        for candidate, cell in cells.items():
            if not any(cell.runs.get(v) for v in others):  # none of the other variants finished here
                continue
            lines.append(f"| {world} | {candidate} | " + " | ".join(
                _value(cell.metric(v, key), key) for v in ["full", *others] for key in GAP_KEYS) + " |")
    return "\n".join(lines)


def write_doc(path: Path, command: str, config: Path, study: WorldsStudy, table: dict[str, dict[str, Cell]],
              references: dict[str, dict | None]) -> None:
    notes = ""
    if path.exists() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1]
    finished = sum(len(runs) for cells in table.values() for cell in cells.values() for runs in cell.runs.values())
    planned = len(study.worlds) * len(study.candidates) * len(study.variants) * len(study.seeds)
    body = f"""# The sentiment recipe across SynthMOSI worlds

Test-split metrics (accuracies in %, MAE raw) of every candidate recipe in every world
(docs/synthmosi_worlds.md), seeds {study.seeds}; each run early-stops on the valid split.
The gap recovered is (full - text-only) / (oracle - text-only) with the candidate's own text-only
model (MAE: the same with the signs turned), the oracle from the world's reference report; the
objective is its mean over worlds on Non0_acc_2. Finished runs: {finished} of {planned}.

- command: `{command}`
- config: `{config}` (recipe `{study.recipe}`; the previous default is the candidate `{study.previous}`)
- machine: {platform.machine()} / {platform.processor() or platform.platform()}, {os.cpu_count()} cores, \
OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}, Python {platform.python_version()}
- code: git {git_revision()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC

## References per world (`mmfusion.reference`)

{reference_table(study, references)}

## Candidates: the objective

{objective_table(study, table)}

## The shipped default per world

Differences are the shipped default's value minus the other's (Non0_acc_2 in points: higher is
better; MAE: lower is better), each a mean over the seeds that model has.

{shipped_table(study, table, references)}

## Per world

{world_table(study, table, references)}

## Other variants

{variants_table(study, table)}

{NOTES_MARKER}{notes}"""
    write_text(path, body)


# --- the command --------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="the study YAML (e.g. configs/worlds_study.yaml)")
    parser.add_argument("--out", type=Path, default=Path("runs/worlds"),
                        help="study directory: <out>/<world>/<candidate>/<variant>/seed<k>/ (default runs/worlds)")
    parser.add_argument("--doc", type=Path, help="also rewrite this tracked results file (docs/results_worlds.md)")
    parser.add_argument("--worlds", nargs="+", metavar="WORLD", help="train only these worlds of the study (tables: all)")
    parser.add_argument("--candidates", nargs="+", metavar="NAME", help="train only these candidates (tables: all)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing and compute no reference: tables from what is finished (n/a elsewhere)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the study config (dotted, repeatable), e.g. seeds=[0,1,2]")
    parser.set_defaults(prog=parser.prog)


def _subset(given: list[str] | None, known: list[str], what: str) -> list[str]:
    if given is None:
        return known
    unknown = [g for g in given if g not in known]
    if unknown:
        raise ValueError(f"--{what} {' '.join(unknown)}: not in the study's {what} {known}")
    return list(dict.fromkeys(given))  # in the order given: the first ones are trained first


def run(args: argparse.Namespace) -> int:
    check_output_paths(args.out / "results.md", args.doc)
    study, recipe = load_study(args.config, args.overrides)
    worlds = _subset(args.worlds, study.worlds, "worlds")
    candidates = _subset(args.candidates, list(study.candidates), "candidates")
    if not args.report_only:
        for seed in study.seeds:  # seed-major, then world: a study cut short has whole worlds of its first seeds
            for world in worlds:
                ensure_world_data(study, recipe, world)
                for candidate in candidates:
                    for variant in study.variants:
                        run_one(study, recipe, args.out, candidate, world, variant, seed)
    compute = study.compute_references and not args.report_only
    references = {w: reference(study, recipe, args.out, w, compute=compute and w in worlds) for w in study.worlds}
    table = collect(study, recipe, args.out, references)
    command = (f"{args.prog} --config {args.config} --out {args.out}"
               + "".join(f" --set {item}" for item in args.overrides))
    for path in (args.out / "results.md", args.doc):
        if path is not None:
            write_doc(path, command, args.config, study, table, references)
    print(objective_table(study, table))
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m mmfusion.worlds_study", __doc__.split("\n\n")[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())

