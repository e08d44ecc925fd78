"""The ablation study in one command: every variant × every seed, then a markdown table.

    mmfusion ablate --config configs/synthmosi_ablation.yaml --seeds 0 1 2 3 4 --out runs/ablation \
        [--doc docs/results_synthmosi.md]

Variants are the source paper's switches (section IV.B, docs/references.md) plus the baselines: the full model; LGT off;
soft mapping off; both off; UFF replaced by concatenation; SLGM off (multimodal task only);
single-modality models; and a late average of the three single-modality models' test predictions.
Each run lives in ``<out>/<variant>/seed<k>`` and is skipped when its ``metrics.json`` exists, so an
interrupted study continues where it stopped. The tables go to ``<out>/results.md``, and to the
tracked ``docs/`` file only when ``--doc`` names it; text below the ``<!-- notes -->`` marker of an
existing results file is kept. Beside each markdown file goes a PNG of the variants table (same
name, ``.png``; ``plot_results``), linked from the markdown.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window; before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
import numpy as np  # noqa: E402

from mmcore.config import apply_overrides, build, load_yaml, to_dict  # noqa: E402
from mmcore.files import write_text  # noqa: E402
from mmcore.loop import RunDir, first_difference  # noqa: E402
from mmcore.runtime import command_main  # noqa: E402
from mmfusion.experiment import SentimentExperiment  # noqa: E402
from mmfusion.metrics import mmsa_metrics  # noqa: E402
from mmfusion.train import train  # noqa: E402

log = logging.getLogger(__name__)

# name -> (what it tests, overrides of the `model` section)
VARIANTS: dict[str, tuple[str, dict]] = {
    "full": ("LGT + soft mapping + low-rank UFF + SLGM (alpha along the centre line)", {}),
    "no_lgt": ("plain self-attention per modality, no text-guided queries", {"use_lgt": False}),
    "no_sm": ("weighted average of per-modality outputs instead of soft mapping", {"use_soft_mapping": False}),
    "no_lgt_no_sm": ("both of the above", {"use_lgt": False, "use_soft_mapping": False}),
    "no_uff": ("concatenation instead of the tensor-fusion product", {"fusion": "concat"}),
    "no_slgm": ("multimodal task only, no generated unimodal labels", {"use_slgm": False}),
    "slgm_ratio": ("SLGM with the paper's relative distance (d_n - d_p) / d_p (eq. 21-22)", {"slgm_distance": "ratio"}),
    "slgm_encoder": ("T/A/V heads and SLGM on pre-LGT encoder features", {"unimodal_features": "encoder"}),
    "slgm_lgt_pooled": ("T/A/V heads and SLGM on LGT streams pooled before soft mapping", {"unimodal_features": "lgt_pooled"}),
    "slgm_subnet": ("T/A/V heads and SLGM on Self-MM-style subnets (mean+max pooled encoder, joining F_M)",
                    {"unimodal_features": "subnet"}),
    "text_only": ("text branch alone", {"modalities": ["text"], "use_slgm": False}),
    "audio_only": ("audio branch alone", {"modalities": ["audio"], "use_slgm": False}),
    "vision_only": ("vision branch alone", {"modalities": ["vision"], "use_slgm": False}),
}
LATE_AVERAGE = ("late_average", "mean of the text-, audio- and vision-only models' predictions")
TABLE_KEYS = ("Has0_acc_2", "Non0_acc_2", "Non0_F1", "Acc_7", "MAE", "Corr")
NOTES_MARKER = "<!-- notes -->"
PLOT_KEYS = ("Non0_acc_2", "MAE")  # higher is better, lower is better


def stored_config(state: dict) -> dict:
    """A run's stored config (``run.json``) with the defaults of keys added to the schema since it was
    written, so that a new option left at its default is no difference."""
    try:
        return to_dict(build(SentimentExperiment, state["config"], where="run.json"))
    except ValueError:  # a key removed since: compare as stored, and the difference is named
        return state["config"]


def finished_result(raw: dict, run_dir: Path, where: str) -> dict | None:
    """The ``metrics.json`` of the finished run of config ``raw`` in ``run_dir``; None when it has not
    finished. A run there of another config (its ``run.json``) is refused with the first differing
    key: the overrides changed since, so remove the run (or name it anew) to retrain."""
    cfg = build(SentimentExperiment, raw, where=where)
    run = RunDir(run_dir)
    state = run.read_state()
    if state is not None and (differs := first_difference(stored_config(state), to_dict(cfg))) is not None:
        key, was, now = differs
        raise ValueError(f"{run_dir}: holds a run of another config ({key}: {was!r} there, {now!r} now); "
                         "remove it to retrain")
    return json.loads(run.metrics.read_text()) if run.metrics.exists() else None


def train_once(raw: dict, run_dir: Path, where: str) -> dict:
    """Train the run of config ``raw`` in ``run_dir``, or read its result when it has finished there
    (:func:`finished_result`). A run that a live process is training is refused; an interrupted one
    continues from its ``last.safetensors`` (the same weights as an uninterrupted run,
    ``mmfusion.train``); one without a checkpoint restarts."""
    done = finished_result(raw, run_dir, where)
    if done is not None:
        return done
    run = RunDir(run_dir)
    state = run.read_state()
    if state is not None and state["status"] == "running":
        raise ValueError(f"{run_dir}: process {state.get('pid')} is training this run now")
    cfg = build(SentimentExperiment, raw, where=where)
    # resume only a run started with exactly this config (RunDir.start checks it); one whose schema
    # gained keys since restarts
    resume = state is not None and run.last.is_file() and first_difference(state["config"], to_dict(cfg)) is None
    log.info("%s -> %s%s", where, run_dir, " (resumed)" if resume else "")
    return train(cfg, run_dir, resume=resume, overwrite=not resume)


def run_variant(base: dict, variant: str, seed: int, out: Path) -> dict:
    """Train one variant with one seed (or read its finished result)."""
    raw = copy.deepcopy(base)
    raw.setdefault("model", {}).update(VARIANTS[variant][1])
    raw.setdefault("train", {})["seed"] = seed
    return train_once(raw, out / variant / f"seed{seed}", where=f"ablation {variant} seed {seed}")


def read_predictions(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return [r["id"] for r in rows], np.array([float(r["label"]) for r in rows]), np.array([float(r["M"]) for r in rows])


def late_average(out: Path, seed: int) -> dict:
    """Test metrics of the mean of the three single-modality models' predictions."""
    return late_average_of([out / v / f"seed{seed}" for v in ("text_only", "audio_only", "vision_only")])


def late_average_of(run_dirs: list[Path]) -> dict:
    """Test metrics of the mean of the predictions of the runs in ``run_dirs`` (same clips in each)."""
    parts = [read_predictions(path / "predictions_test.csv") for path in run_dirs]
    ids, label, _ = parts[0]
    for path, (other_ids, _, _) in zip(run_dirs[1:], parts[1:]):
        if other_ids != ids:
            raise ValueError(f"{path}: its test predictions cover other clips than {run_dirs[0]}'s")
    return {"test": mmsa_metrics(np.mean([p[2] for p in parts], axis=0), label)}


def _mean_std(values: list[float | None]) -> str:
    defined = [v for v in values if v is not None]
    if not defined:
        return "n/a"
    return f"{np.mean(defined):.4f} ± {np.std(defined):.4f}"


def results_table(results: dict[str, list[dict]]) -> str:
    lines = ["| variant | what it tests | " + " | ".join(TABLE_KEYS) + " |", "|---" * (len(TABLE_KEYS) + 2) + "|"]
    descriptions = {**{k: v[0] for k, v in VARIANTS.items()}, LATE_AVERAGE[0]: LATE_AVERAGE[1]}
    for variant, runs in results.items():
        cells = [_mean_std([r["test"][k] for r in runs]) for k in TABLE_KEYS]
        lines.append(f"| {variant} | {descriptions[variant]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slgm_table(results: dict[str, list[dict]]) -> str:
    """Per variant with SLGM: corr(generated label, hidden truth) per modality, and the baseline of
    copying the multimodal label unchanged."""
    modalities = (("T", "text"), ("A", "audio"), ("V", "vision"))
    lines = ["| variant | " + " | ".join(f"{name}: generated" for _, name in modalities)
             + " | " + " | ".join(f"{name}: M copied" for _, name in modalities) + " |",
             "|---" * (1 + 2 * len(modalities)) + "|"]
    for variant, runs in results.items():
        if not any(r.get("slgm") for r in runs):
            continue
        generated = [_mean_std([r["slgm"].get(f"{t}/corr_generated") for r in runs]) for t, _ in modalities]
        copied = [_mean_std([r["slgm"].get(f"{t}/corr_copied_M") for r in runs]) for t, _ in modalities]
        lines.append(f"| {variant} | " + " | ".join(generated + copied) + " |")
    return "\n".join(lines)


def plot_results(results: dict[str, list[dict]], path: Path, title: str = "Ablation on SynthMOSI (test split)") -> Path:
    """A PNG of the variants table: one panel per ``PLOT_KEYS`` metric, a bar per variant (mean over
    seeds, the error bar one std), the full model's mean as a dashed line. Returns ``path``."""
    variants = list(results)
    fig, axes = plt.subplots(1, len(PLOT_KEYS), figsize=(10, 0.45 * len(variants) + 1.6), dpi=100, sharey=True)
    for ax, key in zip(np.atleast_1d(axes), PLOT_KEYS):
        values = [[r["test"][key] for r in results[v] if r["test"].get(key) is not None] for v in variants]
        means = [float(np.mean(v)) if v else np.nan for v in values]
        stds = [float(np.std(v)) if v else 0.0 for v in values]
        y = np.arange(len(variants))
        ax.barh(y, means, xerr=stds, color=["tab:blue" if v == "full" else "tab:gray" for v in variants], capsize=3)
        if "full" in results and np.isfinite(means[variants.index("full")]):
            ax.axvline(means[variants.index("full")], color="tab:blue", linestyle="--", linewidth=1)
        finite = [m for m in means if np.isfinite(m)]
        if finite:  # zoom on the range the variants span, so the differences show
            low, high = min(finite) - max(stds), max(finite) + max(stds)
            pad = 0.1 * (high - low) or 0.01
            ax.set_xlim(low - pad, high + pad)
        ax.set_yticks(y)
        ax.set_yticklabels(variants, fontsize=8)
        ax.set_xlabel(f"{key} ({'higher' if key != 'MAE' else 'lower'} is better)")
        ax.grid(axis="x", alpha=0.3)
    np.atleast_1d(axes)[0].invert_yaxis()  # table order, top down (the panels share the y axis)
    fig.suptitle(f"{title}, mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_doc(path: Path, command: str, config: Path, seeds: list[int], results: dict[str, list[dict]]) -> None:
    notes = ""
    if path.exists() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1]
    body = f"""# Ablation on SynthMOSI

Test-split metrics, mean ± std over seeds {seeds}; each run early-stops on the valid split.

- command: `{command}`
- config: `{config}` (data generated by SynthMOSI as the config says)
- machine: {platform.machine()} / {platform.processor() or platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}
- code: git {git_revision()}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC

## Variants

{results_table(results)}

![Test metrics per variant, mean ± std over seeds]({path.with_suffix(".png").name})

## SLGM against the hidden unimodal truth (train split, labels after the last epoch)

SynthMOSI stores each clip's hidden unimodal sentiments as `regression_labels_T/A/V`; the model never
sees them. Pearson correlation with that truth of the labels SLGM generated, and of the multimodal
label copied unchanged (what a model without SLGM would use).

{slgm_table(results)}

{NOTES_MARKER}{notes}"""
    write_text(path, body)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="the base sentiment YAML every variant overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="model seeds (default 0 1 2 3 4)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                        help=f"subset of: {' '.join(VARIANTS)} (default: all)")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"),
                        help="study directory: <out>/<variant>/seed<k>/ per run and <out>/results.md (default runs/ablation)")
    parser.add_argument("--doc", type=Path,
                        help="also rewrite this tracked results file (e.g. docs/results_synthmosi.md), keeping its notes")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the base config for every variant (dotted, repeatable)")
    parser.set_defaults(prog=parser.prog)


def run(args: argparse.Namespace) -> int:
    check_output_paths(args.out / "results.md", args.doc)
    base = apply_overrides(load_yaml(args.config), args.overrides)
    build(SentimentExperiment, base, where=str(args.config))  # a bad key fails before any run
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    for seed in args.seeds:  # seed-major: a study cut short still has every variant for its first seeds
        for variant in args.variants:
            results[variant].append(run_variant(base, variant, seed, args.out))
    if {"text_only", "audio_only", "vision_only"} <= set(args.variants):
        results[LATE_AVERAGE[0]] = [late_average(args.out, seed) for seed in args.seeds]
    command = (f"{args.prog} --config {args.config} --seeds {' '.join(map(str, args.seeds))} --out {args.out}"
               + ("" if args.variants == list(VARIANTS) else f" --variants {' '.join(args.variants)}")
               + "".join(f" --set {item}" for item in args.overrides))
    for path in (args.out / "results.md", args.doc):
        if path is not None:
            write_doc(path, command, args.config, args.seeds, results)
            plot_results(results, path.with_suffix(".png"))  # the table as a chart, beside the markdown
    print(results_table(results))
    return 0


def check_output_paths(*paths: Path | None) -> None:
    """Fail before any training when an output file cannot be written (a directory, a missing parent)."""
    for path in paths:
        if path is not None and path.is_dir():
            raise ValueError(f"{path}: is a directory, expected a markdown file")


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m mmfusion.ablate", __doc__.split("\n\n")[0], add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
