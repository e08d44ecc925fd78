"""Regenerate the tables of docs/results_recommender.md (issue 14): every system on both metric families.

    nice -n 19 env OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/results_recommender.py

For each data set (ML-100K temporal, ML-100K random, the e-commerce video catalogue at random) it

1. trains what is missing (a run whose ``metrics.json`` exists is reused; ``--retrain`` replaces them):
   the ranker without history and the stock deepctr-torch xDeepFM, seeds 0, 1, 2 (``train.py``);
2. runs ``python -m xdeepfm.recall_eval`` with the two-stage system (its ``ranker.run`` names the
   ranker runs of step 1): the recall channels, the merge, the ranker alone and the two-stage system on
   the full catalogue, and every system's CTR metrics on the test impressions (reused when its
   ``recall_metrics.json`` exists, unless ``--rerun-recall``);
3. rewrites the doc's sections between ``<!-- NAME:start -->`` / ``<!-- NAME:end -->`` (``benchlib.write_section``):
   ``summary_NAME`` (both metric families, every system) and ``recall_NAME`` (the recall channels' table
   of section 1). The rest of the doc (the protocol text, section 2) is left as it is.

``--only NAME`` limits it to some data sets (``ml100k_temporal``, ``ml100k_random``, ``ecommerce``,
``ml100k_cold_item``); ``--seeds`` to some seeds; ``--no-train`` trains nothing (a missing run is left
out of the CTR table); ``--tables-only`` only rewrites the doc from the outputs there are. The e-commerce
data set ``datasets/ecommerce_video_t`` is written first when missing (``ensure_catalogue``). Every
command runs in a child process with this process's environment; the whole page takes a few hours on
the project's 2-core machine (one thread each).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import REPO, cpu_model, git_revision, loadavg, write_section  # noqa: E402

from mmapp.demo import clip_table, make_catalogue  # noqa: E402 - benchlib puts the repository on sys.path
from xdeepfm.recall_eval import summary  # noqa: E402

DOC = REPO / "docs" / "results_recommender.md"
SEEDS = (0, 1, 2)
PY = sys.executable
TRAIN_SETS = ("--set", "train.progress=false")


@dataclass
class Ranker:
    """A ranker trained per seed: ``train.py --config CONFIG [overrides] --out DIR/seedN --seed N``."""

    label: str
    config: str
    out: str
    overrides: tuple[str, ...] = ()

    def command(self, seed: int) -> list[str]:
        sets = [a for o in self.overrides for a in ("--set", o)]
        return [
            PY,
            "train.py",
            "--config",
            self.config,
            *sets,
            "--out",
            f"{self.out}/seed{seed}",
            "--seed",
            str(seed),
            *TRAIN_SETS,
        ]


@dataclass
class DataSet:
    name: str
    title: str
    recall_config: str
    recall_overrides: tuple[str, ...]
    recall_out: str
    rankers: list[Ranker] = field(default_factory=list)
    note: str = ""
    history_run: str = ""  # ranker.run of a ranker with history: the two-stage system again with it (recall_out + "_history")

    def history_out(self) -> str:
        return f"{self.recall_out}_history"


ECOM_DATA = "datasets/ecommerce_video_t"  # the main job's catalogue with the impressions' timestamps (ensure_catalogue)
ECOM_RANDOM = (f"data.path={ECOM_DATA}", "data.split=random", "data.cold_videos=null")
DATASETS = {
    "ml100k_temporal": DataSet(
        "ml100k_temporal",
        "MovieLens-100K, temporal split (per user: last 10 ratings to test, the 10 before to valid)",
        "configs/recall_ml100k.yaml",
        ("ranker.run=runs/ml100k_temporal/seed{seed}",),
        "runs/recall/ml100k_temporal",
        history_run="runs/issue14/din8_temporal/seed{seed}",
        rankers=[
            Ranker(
                "ranker without history (`ml100k_xdeepfm_temporal.yaml`)",
                "configs/ml100k_xdeepfm_temporal.yaml",
                "runs/ml100k_temporal",
            ),
            Ranker(
                "stock deepctr-torch xDeepFM (`ml100k_deepctr_stock.yaml`, temporal)",
                "configs/ml100k_deepctr_stock.yaml",
                "runs/ml100k_deepctr_stock_temporal",
                ("data.split=temporal", "data.leave_last=10"),
            ),
            Ranker(
                "ranker with history (DIN, `ml100k_xdeepfm_history_temporal.yaml`; section 2)",
                "configs/ml100k_xdeepfm_history_temporal.yaml",
                "runs/issue14/din8_temporal",
            ),
            Ranker(
                "ranker without history, regularised (`ml100k_xdeepfm_reg_temporal.yaml`; section 2)",
                "configs/ml100k_xdeepfm_reg_temporal.yaml",
                "runs/issue14/none_reg_temporal",
            ),
            Ranker(
                "ranker with history (DIN), regularised (`ml100k_xdeepfm_history_reg_temporal.yaml`; section 2)",
                "configs/ml100k_xdeepfm_history_reg_temporal.yaml",
                "runs/issue14/din_reg_temporal",
            ),
        ],
    ),
    "ml100k_random": DataSet(
        "ml100k_random",
        "MovieLens-100K, random split (80/10/10 rows, split_seed 2024)",
        "configs/recall_ml100k.yaml",
        ("data.split=random", "ranker.run=runs/issue14/none8/seed{seed}"),
        "runs/recall/ml100k_random",
        history_run="runs/issue14/din8/seed{seed}",
        rankers=[
            # the same runs as section 2's "none" arm (runs/issue14/none8: the same config, seeds 0-2)
            Ranker("ranker without history (`ml100k_xdeepfm.yaml`)", "configs/ml100k_xdeepfm.yaml", "runs/issue14/none8"),
            Ranker(
                "stock deepctr-torch xDeepFM (`ml100k_deepctr_stock.yaml`)",
                "configs/ml100k_deepctr_stock.yaml",
                "runs/ml100k_deepctr_stock",
            ),
            Ranker(
                "ranker with history (DIN, `ml100k_xdeepfm_history.yaml`; section 2)",
                "configs/ml100k_xdeepfm_history.yaml",
                "runs/issue14/din8",
            ),
            Ranker(
                "ranker without history, regularised (`ml100k_xdeepfm_reg.yaml`; section 2)",
                "configs/ml100k_xdeepfm_reg.yaml",
                "runs/issue14/none_reg",
            ),
            Ranker(
                "ranker with history (DIN), regularised (`ml100k_xdeepfm_history_reg.yaml`; section 2)",
                "configs/ml100k_xdeepfm_history_reg.yaml",
                "runs/issue14/din_reg",
            ),
        ],
    ),
    "ecommerce": DataSet(
        "ecommerce",
        "E-commerce video catalogue (`datasets/ecommerce_video_t`, the main job's `datasets/ecommerce_video` with timestamps), random split (80/10/10 impressions, split_seed 2024)",
        "configs/recall_ecommerce_video_eval.yaml",
        ("ranker.run=runs/ecommerce_video_t_random/seed{seed}",),
        "runs/recall/ecommerce_video_random",
        history_run="runs/ecommerce_video_t_history_random/seed{seed}",
        rankers=[
            Ranker(
                "ranker without history (`ecommerce_video_xdeepfm.yaml`, random split)",
                "configs/ecommerce_video_xdeepfm.yaml",
                "runs/ecommerce_video_t_random",
                ECOM_RANDOM,
            ),
            Ranker(
                "stock deepctr-torch xDeepFM (`ecommerce_video_xdeepfm.yaml`, `model.implementation=deepctr`, random split)",
                "configs/ecommerce_video_xdeepfm.yaml",
                "runs/ecommerce_video_t_deepctr_stock_random",
                ("model.implementation=deepctr", "train.oov_dropout={}", *ECOM_RANDOM),
            ),
            Ranker(
                "ranker with history (DIN, `ecommerce_video_xdeepfm_history.yaml`, random split)",
                "configs/ecommerce_video_xdeepfm_history.yaml",
                "runs/ecommerce_video_t_history_random",
                ECOM_RANDOM,
            ),
        ],
    ),
    "ml100k_cold_item": DataSet(
        "ml100k_cold_item",
        "MovieLens-100K, cold-item split (recall channels only)",
        "configs/recall_ml100k.yaml",
        ("data.split=cold_item", "channels=[popularity,itemcf,two_tower]"),
        "runs/recall/ml100k_cold_item",
    ),
}
KS = (10, 20, 50)
TOPK = [f"{m}@{k}" for m in ("recall", "ndcg", "hr", "mrr") for k in KS]
LABELS = {
    "popularity": "popularity",
    "itemcf": "ItemCF",
    "bpr": "BPR-MF",
    "two_tower": "two-tower",
    "merge": "merge (recall stage)",
    "ranker": "ranker without history, alone (whole catalogue)",
    "fusion": "merge -> RRF of the channels (no ranker)",
    "two_stage": "**two-stage: merge -> ranker x RRF of the merge channels**",
    "itemcf_met": "ItemCF on every interaction (label ignored)",
    "fusion_met": "merge -> ItemCF-on-interactions order (no ranker)",
    "two_stage_met": "**two-stage: merge -> ranker x ItemCF-on-interactions**",
    "ranker_history": "ranker with history (DIN), alone (whole catalogue)",
    "two_stage_history": "**two-stage: merge -> ranker with history (DIN) x RRF of the merge channels**",
}
SYSTEMS = (
    "popularity",
    "itemcf",
    "bpr",
    "two_tower",
    "itemcf_met",
    "merge",
    "ranker",
    "fusion",
    "two_stage",
    "fusion_met",
    "two_stage_met",
    "ranker_history",
    "two_stage_history",
)
BASELINES = ("popularity", "itemcf", "bpr", "two_tower", "ranker", "itemcf_met")
ISSUE_PEERS = ("popularity", "itemcf", "bpr", "two_tower", "ranker")  # issue 14's peers, and the channels of the merge


def ensure_catalogue() -> None:
    """``datasets/ecommerce_video_t``: the main job's video catalogue written again by the current generator
    (``mmapp.demo.make_catalogue``, the same seed and sizes: the same impressions and clicks, plus a
    ``timestamp``), with the main job's video semantics beside it."""
    folder = REPO / ECOM_DATA
    if (folder / "impressions.csv").exists():
        return
    clips = clip_table(REPO / "datasets" / "synthvideo_small")
    make_catalogue(folder, clips, 2000, 100, 6)
    shutil.copy(REPO / "datasets" / "ecommerce_video" / "semantics_extracted.npz", folder / "semantics_extracted.npz")


def shell(command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"{time.strftime('%H:%M:%S')} $ {shlex.join(command)}  (log: {log.relative_to(REPO)})", flush=True)
    with log.open("w") as out:
        done = subprocess.run(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(command)}; see {log}")


def recall_command(ds: DataSet, seeds: tuple[int, ...] = SEEDS, history: bool = False) -> list[str]:
    """``xdeepfm.recall_eval`` for the data set; ``history``: with the history ranker as the second stage
    (and no ItemCF-on-interactions variant), into ``ds.history_out()``."""
    overrides = [*ds.recall_overrides, *([f"eval.seeds=[{','.join(map(str, seeds))}]"] if tuple(seeds) != SEEDS else [])]
    if history:
        overrides = [o for o in overrides if not o.startswith("ranker.run=")]
        overrides += [f"ranker.run={ds.history_run}", "ranker.interaction_fusion=[]"]
    sets = [a for o in overrides for a in ("--set", o)]
    out = ds.history_out() if history else ds.recall_out
    return [PY, "-m", "xdeepfm.recall_eval", "--config", ds.recall_config, *sets, "--threads", "1", "--out", out]


def cell(values: list, digits: int = 4) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def ranker_runs(r: Ranker) -> list[dict]:
    return [
        json.loads((REPO / r.out / f"seed{s}" / "metrics.json").read_text())
        for s in SEEDS
        if (REPO / r.out / f"seed{s}" / "metrics.json").exists()
    ]


def summary_section(ds: DataSet, result: dict, history: dict | None = None) -> str:
    runs = dict(result["runs"])
    if history is not None:  # the same channels and seeds; its second stage read the history ranker
        runs.update({f"{k}_history": v for k, v in history["runs"].items() if k in ("ranker", "two_stage")})
    cfg = result["config"]
    lines = [
        f"### {ds.title}",
        "",
        f"`python {shlex.join(recall_command(ds, tuple(cfg['eval']['seeds']))[1:])}` (after the ranker runs below; "
        f"`python bench/results_recommender.py --only {ds.name}` runs both)",
        "",
        f"Test users with a positive: {result['test_users']} ({result['skipped_users']} without); catalogue {result['items']} items; "
        f"seeds {cfg['eval']['seeds']}; merge {cfg['merge']['n']} candidates, "
        + (f"quotas chosen per seed on valid among {len(cfg['ranker']['quota_options'])} options (`ranker.quota_options`; "
           f"the chosen ones below), the \"merge (recall stage)\" row with the two-stage system's choice."
           if cfg["ranker"].get("quota_options") else f"quotas {cfg['merge']['quotas']}."),
        "",
        "**Full catalogue (RecBole full sort), test split**",
        "",
        "| system | seeds | " + " | ".join(TOPK) + f" | Recall@{cfg['merge']['n']} |",
        "|---|---:|" + "---:|" * (len(TOPK) + 1),
    ]
    for name in SYSTEMS:
        if name not in runs:
            continue
        rs = runs[name]
        n = cfg["merge"]["n"]
        lines.append(
            f"| {LABELS[name]} | {len(rs)} | "
            + " | ".join(cell([r.get(m) for r in rs]) for m in TOPK)
            + f" | {cell([r.get(f'list_recall@{n}') for r in rs])} |"
        )
    for system in ("two_stage", "two_stage_met", "two_stage_history"):
        if system not in runs:
            continue
        ts = runs[system]
        alphas = ", ".join(f"seed {r['seed']}: {r['alpha']:g}" for r in ts)
        quotas = ", ".join(f"seed {r['seed']}: {r['quotas']}" for r in ts if "quotas" in r)
        lines += [
            "",
            f"{LABELS[system]}: alpha (the weight of log RRF) chosen per seed on the valid split's users by "
            f"{cfg['ranker']['select']}: {alphas}" + (f"; with the merge quotas (chosen with it): {quotas}." if quotas else "."),
        ]
        verdict = []
        for m in ("ndcg@10", "recall@50"):
            ours = np.mean([r[m] for r in ts])
            for pool in (ISSUE_PEERS, BASELINES):
                n = max((b for b in pool if b in runs), key=lambda b: np.mean([r[m] for r in runs[b]]))
                theirs = np.mean([r[m] for r in runs[n]])
                verdict.append(
                    f"{m} {ours:.4f} vs the best {'of the issue' + chr(39) + 's peers and the channels' if pool is ISSUE_PEERS else 'peer of all'} "
                    f"({LABELS[n]}) {theirs:.4f}: {'ahead' if ours > theirs else '**behind**'} ({ours - theirs:+.4f})"
                )
        lines.append("Must-show check (means over seeds): " + "; ".join(verdict) + ".")
    lines += [
        "",
        "**CTR metrics on the labelled test impressions**",
        "",
        "| system | seeds | AUC | logloss | GAUC | source |",
        "|---|---:|---:|---:|---:|---|",
    ]
    ctr = result.get("ctr", {})
    for name in ("popularity", "itemcf", "bpr", "two_tower", "fusion"):
        if name in ctr:
            rs = ctr[name]
            lines.append(
                f"| {LABELS[name]} (its score) | {len(rs)} | {cell([r['auc'] for r in rs])} | — | {cell([r['gauc'] for r in rs])} | recall_eval |"
            )
    for r in ds.rankers:
        rs = ranker_runs(r)
        seeds = ",".join(str(x["seed"]) for x in rs)
        lines.append(
            f"| {r.label} | {len(rs)} | {cell([x['test']['auc'] for x in rs])} | {cell([x['test']['logloss'] for x in rs])} | "
            f"{cell([x['test']['gauc'] for x in rs])} | `{r.out}/seed{{{seeds}}}` |"
        )
    for label, source in ((LABELS["two_stage"], ctr), (LABELS["two_stage_history"], (history or {}).get("ctr", {}))):
        if "two_stage" in source:
            rs = source["two_stage"]
            lines.append(
                f"| {label} (log p + alpha log RRF) | {len(rs)} | {cell([r['auc'] for r in rs])} | — | "
                f"{cell([r['gauc'] for r in rs])} | recall_eval |"
            )
    lines += ["", "logloss only for probabilities (the rankers); a recall channel's or the fused score is not one."]
    return "\n".join(lines)


def recall_section(ds: DataSet, result: dict) -> str:
    cfg = result["config"]
    header = (
        f"{cfg['eval']['split']} split: {result['items']} items, {result['test_users']} users with a positive "
        f"({result['skipped_users']} without), {result['cold_items']} cold items; seeds {cfg['eval']['seeds']}"
    )
    keep = {k: v for k, v in result["runs"].items() if k in ("popularity", "itemcf", "bpr", "two_tower", "merge")}
    table = summary({**result, "runs": keep}, list(cfg["eval"]["ks"]), cfg["merge"]["n"])
    return f"`python {shlex.join(recall_command(ds, tuple(cfg['eval']['seeds']))[1:])}`\n\n{header}\n\n{table}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--retrain", action="store_true", help="train every ranker run again")
    parser.add_argument("--rerun-recall", action="store_true", help="run recall_eval again even where its output exists")
    parser.add_argument("--no-train", action="store_true", help="train nothing: a missing ranker run is left out of the tables")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="seeds to train and evaluate (default 0 1 2)")
    parser.add_argument("--tables-only", action="store_true", help="only rewrite the doc from the existing outputs")
    args = parser.parse_args(argv)
    started = time.time()
    for name in args.only:
        ds = DATASETS[name]
        if not args.tables_only:
            if name == "ecommerce":
                ensure_catalogue()
            for r in ds.rankers:
                for seed in args.seeds:
                    if (REPO / r.out / f"seed{seed}" / "metrics.json").exists() and not args.retrain:
                        continue
                    if args.no_train:
                        print(f"{r.out}/seed{seed}: no metrics.json; left out of the tables (--no-train)", flush=True)
                        continue
                    shell(r.command(seed) + (["--overwrite"] if args.retrain else []), REPO / r.out / f"seed{seed}.log")
            if args.rerun_recall or not (REPO / ds.recall_out / "recall_metrics.json").exists():
                shell(recall_command(ds, tuple(args.seeds)), REPO / ds.recall_out / "recall_eval.log")
            if ds.history_run and (args.rerun_recall or not (REPO / ds.history_out() / "recall_metrics.json").exists()):
                shell(recall_command(ds, tuple(args.seeds), history=True), REPO / ds.history_out() / "recall_eval.log")
        if not (REPO / ds.recall_out / "recall_metrics.json").exists():
            print(f"{name}: no {ds.recall_out}/recall_metrics.json; its sections are left as they are", flush=True)
            continue
        result = json.loads((REPO / ds.recall_out / "recall_metrics.json").read_text())
        write_section(args.doc, f"## {ds.title}", f"recall_{name}", recall_section(ds, result))
        history_file = REPO / ds.history_out() / "recall_metrics.json"
        history = json.loads(history_file.read_text()) if ds.history_run and history_file.exists() else None
        if ds.rankers:
            write_section(args.doc, f"## {ds.title}", f"summary_{name}", summary_section(ds, result, history))
        print(f"{name}: sections written to {args.doc}", flush=True)
    print(f"done in {time.time() - started:.0f} s; machine: {cpu_model()}, load {loadavg()}, revision {git_revision()}")


if __name__ == "__main__":
    main()
