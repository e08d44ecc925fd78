"""Quick reference predictors on an MMSA pickle: how much of the test metric set is reachable.

Predictors (all fitted on train, hyper-parameters chosen by valid MAE, scored on test with
``mmfusion.metrics.mmsa_metrics``):

(a) text-only ridge on mean-pooled encoder states of ``raw_text`` (bundled MiniLM by default);
(b) audio-only and (c) vision-only ridge on pooled statistics over valid frames
    (per dimension: mean, std, max, min);
(d) late average: the mean of the three unimodal predictions;
(e) early fusion: an MLP on the concatenated (standardised) pooled features of (a)-(c);
(f) oracle: gradient boosting on the hidden unimodal labels ``regression_labels_T/A/V`` (only when
    the pickle has them; an upper bound for SynthMOSI, whose y is a function of them plus
    annotator noise), plus the clip type ``synth_clip_type`` when the pickle has it (the
    ``cliptype`` world's label also depends on it: ``mmfusion.data.worlds``).

Usage (``--size`` / ``--world`` generate the SynthMOSI world into ``--data`` first when it is missing)::

    python -m mmfusion.reference --data datasets/synthmosi_mosi.pkl --out docs/synthmosi.md --seed 0
    python -m mmfusion.reference --data datasets/synthmosi_tiny_trend.pkl --size tiny --world trend --out /tmp/trend.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import pickle
import platform
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from mmcore.files import write_text
from mmcore.hf import default_model_path, load_model, load_tokenizer
from mmfusion.data.mmsa import SPLITS, MMSASplit, load_mmsa
from mmfusion.data.synthetic import PRESETS, generate, write_pickle
from mmfusion.data.worlds import WORLDS
from mmfusion.metrics import METRIC_KEYS, mmsa_metrics

log = logging.getLogger(__name__)

RIDGE_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
MLP_ALPHAS = (3.0, 10.0, 30.0)
MLP_HIDDEN = ((64,), (256, 64))


def pooled_stats(x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(N, 4D) per-dimension mean, std, max, min of ``x`` (N, L, D) over frames t < lengths."""
    valid = (np.arange(x.shape[1])[None, :] < lengths[:, None])[:, :, None]
    count = np.maximum(lengths, 1)[:, None].astype(np.float64)
    mean = np.where(valid, x, 0.0).sum(axis=1) / count
    std = np.sqrt(np.where(valid, (x - mean[:, None, :]) ** 2, 0.0).sum(axis=1) / count)
    high = np.where(valid, x, -np.inf).max(axis=1)
    low = np.where(valid, x, np.inf).min(axis=1)
    stats = np.concatenate([mean, std, high, low], axis=1)
    return np.where(np.isfinite(stats), stats, 0.0)  # clips of length 0


def text_embeddings(texts: list[str], model_path: str, batch_size: int = 128) -> np.ndarray:
    """(N, H) mean-pooled last hidden states of the encoder over the real tokens of each text."""
    import torch
    from tqdm import tqdm
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path).eval()
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc="text embeddings", leave=False):
            enc = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=128,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"][:, :, None].to(hidden.dtype)
            out.append(((hidden * mask).sum(dim=1) / mask.sum(dim=1)).numpy())
    return np.concatenate(out).astype(np.float64)


def _mae(pred: np.ndarray, label: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - label)))


@dataclass
class Fitted:
    """A model chosen on valid: its test predictions and the choice made."""

    test_pred: np.ndarray
    valid_mae: float
    choice: str


def select_on_valid(candidates: dict[str, Pipeline], x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> Fitted:
    """Fit every candidate on train, keep the one with the lowest valid MAE."""
    best: Fitted | None = None
    for name, model in candidates.items():
        model.fit(x["train"], y["train"])
        mae = _mae(model.predict(x["valid"]), y["valid"])
        log.info("  %s: valid MAE %.4f", name, mae)
        if best is None or mae < best.valid_mae:
            best = Fitted(test_pred=model.predict(x["test"]), valid_mae=mae, choice=name)
    assert best is not None
    return best


def ridge(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> Fitted:
    return select_on_valid(
        {f"alpha={a:g}": make_pipeline(StandardScaler(), Ridge(alpha=a)) for a in RIDGE_ALPHAS}, x, y
    )


def early_fusion(x: dict[str, np.ndarray], y: dict[str, np.ndarray], seed: int) -> Fitted:
    candidates = {
        f"hidden={h}, alpha={a:g}": make_pipeline(
            StandardScaler(),
            MLPRegressor(hidden_layer_sizes=h, alpha=a, max_iter=500, early_stopping=True, random_state=seed),
        )
        for a in MLP_ALPHAS
        for h in MLP_HIDDEN
    }
    return select_on_valid(candidates, x, y)


def oracle(s: dict[str, np.ndarray], y: dict[str, np.ndarray], seed: int) -> Fitted:
    return select_on_valid(
        {f"lr={lr:g}": HistGradientBoostingRegressor(learning_rate=lr, random_state=seed) for lr in (0.05, 0.1)}, s, y
    )


def run_reference(data_path: str | Path, seed: int = 0, model_path: str | None = None,
                  early_fusion_mlp: bool = True) -> dict[str, dict]:
    """All reference predictors on ``data_path``; ``{name: {"metrics", "choice", "subset"}}``.
    ``early_fusion_mlp=False`` leaves out (e), the slowest one."""
    if model_path is None:
        model_path = default_model_path()
    data = load_mmsa(data_path)
    splits: dict[str, MMSASplit] = data.splits
    y = {s: splits[s].labels.astype(np.float64) for s in SPLITS}
    feats: dict[str, dict[str, np.ndarray]] = {"text": {}, "audio": {}, "vision": {}}
    for s in SPLITS:
        if not any(splits[s].raw_text):
            raise ValueError(f"{data_path}: split '{s}', key 'raw_text': missing or empty (the text predictor needs it)")
        feats["text"][s] = text_embeddings([str(t) for t in splits[s].raw_text], model_path)
        feats["audio"][s] = pooled_stats(splits[s].audio, splits[s].audio_lengths)
        feats["vision"][s] = pooled_stats(splits[s].vision, splits[s].vision_lengths)

    fitted: dict[str, Fitted] = {}
    for letter, modality in zip("abc", ("text", "audio", "vision")):
        log.info("%s-only ridge", modality)
        fitted[f"({letter}) {modality}-only ridge"] = ridge(feats[modality], y)
    late = sum(fitted[f"({l}) {m}-only ridge"].test_pred for l, m in zip("abc", ("text", "audio", "vision"))) / 3.0
    fitted["(d) late average"] = Fitted(test_pred=late, valid_mae=float("nan"), choice="mean of (a)-(c)")
    if early_fusion_mlp:
        log.info("early fusion MLP")
        concat = {s: np.concatenate([feats[m][s] for m in ("text", "audio", "vision")], axis=1) for s in SPLITS}
        fitted["(e) early fusion MLP"] = early_fusion(concat, y, seed)
    if data.has_unimodal_labels:
        log.info("oracle")
        hidden = {s: np.stack([splits[s].unimodal_labels[t] for t in "TAV"], axis=1) for s in SPLITS}
        clip_type = _synth_key(data_path, "synth_clip_type")
        name = "(f) oracle on hidden s_t, s_a, s_v"
        if clip_type is not None:  # the cliptype world: y depends on the clip type too
            hidden = {s: np.concatenate([hidden[s], np.eye(int(clip_type[s].max()) + 1)[clip_type[s]]], axis=1)
                      for s in SPLITS}
            name += ", clip type"
        fitted[name] = oracle(hidden, y, seed)

    kind = _synth_key(data_path, "synth_text_kind")
    kind = None if kind is None else kind["test"]
    results = {}
    for name, f in fitted.items():
        entry = {"metrics": mmsa_metrics(f.test_pred, y["test"]), "choice": f.choice}
        if kind is not None:
            hard = kind != 0
            entry["subset"] = mmsa_metrics(f.test_pred[hard], y["test"][hard])
        results[name] = entry
    return results


def _synth_key(path: str | Path, key: str) -> dict[str, np.ndarray] | None:
    """A SynthMOSI hidden key (``synth_text_kind``, ``synth_clip_type``, ...) per split; None when absent."""
    with open(path, "rb") as fh:
        raw = pickle.load(fh)
    if any(raw[s].get(key) is None for s in SPLITS):
        return None
    return {s: np.asarray(raw[s][key]) for s in SPLITS}


def _fmt(value: float | None, key: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if key in ("MAE", "Corr") else f"{100 * value:.2f}"


def read_reference_markdown(path: str | Path) -> dict[str, dict[str, float | None]]:
    """The main table of a report :func:`render_markdown` wrote, back as ``{predictor: {metric: value}}``
    (accuracies and F1 as fractions again, ``n/a`` as None), e.g. for ``mmfusion.worlds_study``."""
    lines = Path(path).read_text().splitlines()
    header = next((i for i, line in enumerate(lines) if line.startswith("| predictor | ")), None)
    if header is None:
        raise ValueError(f"{path}: no '| predictor | ...' table (expected a report of python -m mmfusion.reference)")
    keys = [cell.strip() for cell in lines[header].strip("|").split("|")][1:]
    rows: dict[str, dict[str, float | None]] = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        name, *cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[name] = {key: None if text == "n/a" else float(text) / (1.0 if key in ("MAE", "Corr") else 100.0)
                      for key, text in zip(keys, cells) if key in METRIC_KEYS}
    return rows


def render_markdown(results: dict[str, dict], command: str, data_path: str, seed: int) -> str:
    """The reference table plus how it was produced."""
    header = "| predictor | " + " | ".join(METRIC_KEYS) + " | chosen on valid |"
    rule = "|---|" + "---|" * (len(METRIC_KEYS) + 1)
    rows = [
        f"| {name} | " + " | ".join(_fmt(r["metrics"][k], k) for k in METRIC_KEYS) + f" | {r['choice']} |"
        for name, r in results.items()
    ]
    world = _synth_key(data_path, "synth_world")
    world_line = ([f"World: `{world['test'][0]}` (`mmfusion.data.worlds`, docs/synthmosi_worlds.md).", ""]
                  if world is not None else [])
    lines = [
        "# SynthMOSI reference predictors",
        "",
        *world_line,
        "Test-split metrics (MMSA convention, `mmfusion.metrics.mmsa_metrics`; accuracies and F1 in %)",
        "of quick predictors fitted on train with hyper-parameters chosen by valid MAE. See",
        "`datasets/README.md` for the generator and `mmfusion/reference.py` for the predictors.",
        "",
        header,
        rule,
        *rows,
    ]
    if all("subset" in r for r in results.values()):
        sub_keys = ("Non0_acc_2", "MAE")
        lines += [
            "",
            "On the test clips whose words do not decide the polarity (`synth_text_kind` ambiguous or",
            "sarcastic):",
            "",
            "| predictor | " + " | ".join(sub_keys) + " |",
            "|---|" + "---|" * len(sub_keys),
            *(
                f"| {name} | " + " | ".join(_fmt(r["subset"][k], k) for k in sub_keys) + " |"
                for name, r in results.items()
            ),
        ]
    lines += [
        "",
        "## How this was produced",
        "",
        f"- command: `{command}`",
        f"- data file: `{data_path}`",
        f"- seed: {seed}",
        f"- machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmfusion.reference", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="MMSA pickle, e.g. datasets/synthmosi_mosi.pkl")
    parser.add_argument("--out", required=True, help="markdown file to write, e.g. docs/synthmosi.md")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MLP / gradient boosting")
    parser.add_argument("--model-path", default=None, help="local text encoder dir (default: bundled MiniLM)")
    parser.add_argument("--size", choices=sorted(PRESETS), default=None,
                        help="generate SynthMOSI of this size into --data first when the file is missing")
    parser.add_argument("--world", choices=list(WORLDS), default="default",
                        help="the SynthMOSI world --size generates (docs/synthmosi_worlds.md)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the SynthMOSI that --size generates")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.world != "default" and args.size is None:
        parser.error("--world generates data: give --size too (tiny, mosi or mosei)")
    if args.size is not None and not Path(args.data).exists():
        log.info("generating SynthMOSI (%s, world %s, seed %d) into %s", args.size, args.world, args.data_seed, args.data)
        write_pickle(generate(args.size, args.data_seed, world=args.world), args.data)
    results = run_reference(args.data, seed=args.seed, model_path=args.model_path)
    command = "python -m mmfusion.reference " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    markdown = render_markdown(results, command, args.data, args.seed)
    write_text(Path(args.out), markdown)
    print(markdown)


if __name__ == "__main__":
    main()
