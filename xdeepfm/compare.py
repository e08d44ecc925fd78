"""Side-by-side comparison: seeds x {ours no text, ours + BERT title, stock deepctr xDeepFM} x splits.

    python -m xdeepfm.compare --config configs/ml100k_xdeepfm.yaml --seeds 0 1 2 \
        --out runs/compare --doc docs/results_ranking.md

Every run goes to ``<out>/<split>/<variant>/seed<s>``; a run whose ``metrics.json`` exists is
reused, so an interrupted comparison resumes. The table (mean +- sample std over seeds, test
split) is written to ``<out>/results.md`` after every finished run, and to the tracked ``--doc``
file only when one is named; beside each goes a PNG of the table (``results.png``, or
``<doc>_ecommerce.png`` in configs mode; ``plot_table``), linked from the markdown.

Configs mode: each config file is one variant (trained as written, on the split it names)::

    python -m xdeepfm.compare --configs configs/ecommerce_xdeepfm_nosemantics.yaml \
        configs/ecommerce_xdeepfm.yaml configs/ecommerce_xdeepfm_oracle.yaml --seeds 0 1 2 \
        --out runs/ecommerce --doc docs/results_ranking.md

Runs go to ``<out>/<config stem>/seed<s>`` (seed-major order). The table is the section
``## E-commerce catalogue: video semantics`` of ``--doc``, between the markers
``<!-- ecommerce:start -->`` and ``<!-- ecommerce:end -->``; the rest of the file is kept (and
the MovieLens mode keeps that section). With three or more configs, the first is the baseline
and the last the upper bound, and each middle one gets the share of the gain it recovers,
``(AUC_x - AUC_first) / (AUC_last - AUC_first)``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window; before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen
import numpy as np  # noqa: E402

from mmcore.files import write_text  # noqa: E402
from mmcore.runtime import command_main  # noqa: E402
from xdeepfm.experiment import RankingExperiment, load_experiment  # noqa: E402
from xdeepfm.train import train  # noqa: E402

log = logging.getLogger(__name__)

VARIANTS = ("ours_notext", "ours_text", "deepctr_stock")
LABELS = {"ours_notext": "ours, no text", "ours_text": "ours + BERT title", "deepctr_stock": "stock deepctr xDeepFM"}
METRICS = ("auc", "logloss", "gauc", "ndcg@10", "hr@10", "precision@10")
SECTION_START, SECTION_END = "<!-- ecommerce:start -->", "<!-- ecommerce:end -->"
PLOT_METRICS = ("auc", "gauc", "ndcg@10")


def plot_table(tables: dict[str, dict[str, list[dict]]], path: Path, title: str) -> Path:
    """A PNG of result tables: one panel per ``PLOT_METRICS`` metric, bars grouped by table (a split, or
    one table in configs mode), a bar per row (variant or config) with the mean over seeds and a
    one-std error bar. ``tables``: table name -> row label -> the runs' ``metrics.json``. Returns ``path``."""
    labels = list(dict.fromkeys(label for rows in tables.values() for label in rows))
    fig, axes = plt.subplots(1, len(PLOT_METRICS), figsize=(4 * len(PLOT_METRICS), 3.4), dpi=100)
    width = 0.8 / max(len(labels), 1)
    for ax, metric in zip(np.atleast_1d(axes), PLOT_METRICS):
        everything = []
        for i, label in enumerate(labels):
            means, stds = [], []
            for rows in tables.values():
                values = [r["test"][metric] for r in rows.get(label, []) if r["test"].get(metric) is not None]
                means.append(float(np.mean(values)) if values else np.nan)
                stds.append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
                everything += [m for m in means[-1:] if np.isfinite(m)]
            x = np.arange(len(tables)) + (i - (len(labels) - 1) / 2) * width
            ax.bar(x, means, width, yerr=stds, capsize=3, label=label)
        if everything:  # zoom on the range the rows span, so the differences show
            low, high = min(everything), max(everything)
            pad = 0.25 * (high - low) or 0.01
            ax.set_ylim(low - pad, high + pad)
        ax.set_xticks(np.arange(len(tables)))
        ax.set_xticklabels(list(tables), fontsize=8)
        ax.set_title(f"test {metric}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(f"{title}: mean ± sample std over seeds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def movielens_png(doc: Path) -> Path:
    return doc.with_suffix(".png")


def ecommerce_png(doc: Path, section: str = "ecommerce") -> Path:
    return doc.with_name(f"{doc.stem}_{section}.png")


def variant_config(base: RankingExperiment, variant: str, split: str, seed: int) -> RankingExperiment:
    config = copy.deepcopy(base)
    config.train.seed = seed
    config.data.split = split
    if variant == "ours_notext":
        config.features.fields = config.features.of_kind("categorical", "multi_valued", "numeric")
    config.model.implementation = "deepctr" if variant == "deepctr_stock" else "ours"
    return config


def describe_source(data) -> str:
    """The data set a report ran on: its kind and where its files are."""
    kind = getattr(data, "kind", "movielens")
    if kind == "ecommerce":
        where = f"path `{data.path}` ({_catalogue_sizes(data.path)})"
    elif kind == "interactions":
        where = f"root `{data.root}`, interactions `{data.interactions.path}`"
    elif kind == "parquet":
        where = f"train `{data.train}`, valid `{data.valid}`, test `{data.test}`"
    else:
        where = f"root `{data.root or 'datasets/ml-100k (default)'}`"
    return f"kind {kind}, {where}"


def describe_data(data) -> str:
    """``describe_source`` and the split (with its options)."""
    split = f"split {data.split}"
    if data.split == "temporal":
        split += (f" (time_cut {data.time_cut})" if data.time_cut is not None else
                  f" (time_quantiles {data.time_quantiles})" if data.time_quantiles is not None else
                  f" (leave_last {data.leave_last})")
    elif hasattr(data, "split_seed"):
        split += f", split_seed {data.split_seed}"
    return f"{describe_source(data)}, {split}"


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def write_doc(doc: Path, out: Path, splits: list[str], seeds: list[int], command: str,
              base: RankingExperiment | None = None) -> None:
    data = [f"Data: {describe_source(base.data)}; split_seed {base.data.split_seed}; the splits below.", ""] \
        if base is not None else []
    lines = [
        "# Ranking results: MovieLens-100K (label = rating >= 4)",
        "",
        f"Command: `{command}`",
        "",
        *data,
        f"Test-split metrics, mean ± sample std over seeds {seeds} (model init/shuffle seed; the data split is fixed).",
        "Top-K lists are each user's test impressions ranked by score. Early stopping on validation AUC.",
        "",
    ]
    tables = {split: {LABELS[v]: _results(out / split / v, seeds) for v in VARIANTS} for split in splits}
    for split in splits:
        lines += [f"## {split} split", "", *_table_header()]
        for variant in VARIANTS:
            lines.append(_row(LABELS[variant], tables[split][LABELS[variant]]))
        lines.append("")
    plot_table(tables, movielens_png(doc), "MovieLens-100K")
    lines += [f"![Test metrics per split and model]({movielens_png(doc).name})", ""]
    text = doc.read_text() if doc.is_file() else ""
    if text.find(SECTION_START) >= 0:  # the e-commerce section and whatever follows it are kept
        lines += [text[text.find(SECTION_START):].rstrip(), ""]
    write_text(doc, "\n".join(lines))


def _results(variant_dir: Path, seeds: list[int]) -> list[dict]:
    """The ``metrics.json`` of ``variant_dir/seed<s>`` for the seeds that have one."""
    paths = [variant_dir / f"seed{seed}" / "metrics.json" for seed in seeds]
    return [json.loads(path.read_text()) for path in paths if path.is_file()]


def _row(label: str, results: list[dict]) -> str:
    """One table row: label, runs, test metrics (mean ± std), best epoch, train seconds per run."""
    cells = [_cell([r["test"][m] for r in results if r["test"][m] is not None]) for m in METRICS]
    epochs = _cell([float(r["best_epoch"]) for r in results]).replace(".0000", "")
    secs = f"{np.mean([r['seconds']['train'] for r in results]):.0f}" if results else "-"
    return f"| {label} | {len(results)} | " + " | ".join(cells) + f" | {epochs} | {secs} |"


def _table_header() -> list[str]:
    return ["| model | runs | " + " | ".join(METRICS) + " | best epoch | train s/run |",
            "|---|---|" + "---|" * (len(METRICS) + 2)]


def _markers(section: str) -> tuple[str, str]:
    return (SECTION_START, SECTION_END) if section == "ecommerce" else (f"<!-- {section}:start -->", f"<!-- {section}:end -->")


def _marked_section(text: str, section: str = "ecommerce") -> str | None:
    """The ``<!-- <section>:start -->`` ... ``<!-- <section>:end -->`` block of ``text`` (markers included)."""
    start_marker, end_marker = _markers(section)
    start, end = text.find(start_marker), text.find(end_marker)
    if start < 0 or end < start:
        return None
    return text[start:end + len(end_marker)]


def replace_marked_section(text: str, section_body: str, section: str = "ecommerce") -> str:
    """``text`` with its marked block ``section`` replaced by ``section_body`` (appended if absent)."""
    start_marker, end_marker = _markers(section)
    block = f"{start_marker}\n{section_body.rstrip()}\n{end_marker}"
    old = _marked_section(text, section)
    if old is not None:
        return text.replace(old, block)
    return (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"


def recovered_gain(low: float, x: float, high: float) -> float | None:
    """Share of the baseline-to-upper-bound gap recovered: (x - low) / (high - low); None if high == low."""
    return None if high == low else (x - low) / (high - low)


def _catalogue_sizes(data_path: str) -> str:
    """Generation arguments from ``catalogue.json`` and the impression count, for the doc."""
    meta_path = Path(data_path) / "catalogue.json"
    if not meta_path.is_file():
        return f"(no {meta_path})"
    meta = json.loads(meta_path.read_text())
    keys = ("seed", "world_seed", "preset", "n_videos", "n_users", "impressions_per_user")
    args = meta.get("args", meta)
    parts = [f"{k}={args[k]}" for k in keys if k in args]
    impressions = Path(data_path) / "impressions.csv"
    if impressions.is_file():
        with impressions.open("rb") as f:
            parts.append(f"impressions={sum(1 for _ in f) - 1}")
    return ", ".join(parts)


def write_configs_doc(doc: Path, out: Path, configs: dict[str, RankingExperiment], labels: list[str],
                      seeds: list[int], command: str, note: str = "", section: str = "ecommerce",
                      title: str = "E-commerce catalogue: video semantics") -> None:
    """Write the section ``section`` (one row per config) into ``doc``, keeping the rest of the file."""
    first = next(iter(configs.values()))
    lines = [
        f"## {title}",
        "",
        *([note, ""] if note else []),
        f"Command: `{command}`",
        "",
        *[f"Data ({stem}): {describe_data(config.data)}." for stem, config in configs.items()
          if describe_data(config.data) != describe_data(first.data) or config is first],
        f"Test-split metrics, mean ± sample std over seeds {seeds} (model init/shuffle seed; the data split is fixed).",
        "Early stopping on validation AUC.",
        "",
        *_table_header(),
    ]
    results = {stem: _results(out / stem, seeds) for stem in configs}
    for stem, label in zip(configs, labels):
        lines.append(_row(label, results[stem]))
    lines.append("")
    plot_table({"e-commerce": {label: results[stem] for stem, label in zip(configs, labels)}}, ecommerce_png(doc, section),
               title)
    lines += [f"![Test metrics per config]({ecommerce_png(doc, section).name})", ""]
    stems = list(configs)
    if len(stems) >= 3:
        low, high = stems[0], stems[-1]
        for stem, label in zip(stems[1:-1], labels[1:-1]):
            lines.append(_gain_line(results, low, stem, high, labels[0], label, labels[-1], seeds))
        lines.append("")
    text = doc.read_text() if doc.is_file() else ""
    write_text(doc, replace_marked_section(text, "\n".join(lines), section))


def _gain_line(results: dict[str, list[dict]], low: str, x: str, high: str,
               low_label: str, x_label: str, high_label: str, seeds: list[int]) -> str:
    """Recovered gain from the mean test AUCs, and per seed where all three runs exist."""
    by_seed = {stem: {r["seed"]: r["test"]["auc"] for r in results[stem]} for stem in (low, x, high)}
    common = [s for s in seeds if all(s in by_seed[stem] for stem in (low, x, high))]
    head = (f"Gain recovered by *{x_label}*: (AUC[{x_label}] − AUC[{low_label}]) / "
            f"(AUC[{high_label}] − AUC[{low_label}])")
    if not common:
        return head + " = - (no seed with all three runs)."
    mean = {stem: float(np.mean([by_seed[stem][s] for s in common])) for stem in (low, x, high)}
    gain = recovered_gain(mean[low], mean[x], mean[high])
    per_seed = [recovered_gain(by_seed[low][s], by_seed[x][s], by_seed[high][s]) for s in common]
    per_seed_text = ", ".join(f"seed {s}: {g:.3f}" if g is not None else f"seed {s}: -"
                              for s, g in zip(common, per_seed))
    gain_text = f"{gain:.3f}" if gain is not None else "- (equal AUCs)"
    line = (f"{head} = {gain_text} on the mean AUCs of seeds {common} "
            f"({mean[x]:.4f} − {mean[low]:.4f}) / ({mean[high]:.4f} − {mean[low]:.4f}); per seed {per_seed_text}.")
    if len(common) > 1:
        noise = max(float(np.std([by_seed[stem][s] for s in common], ddof=1)) for stem in (low, high))
        if abs(mean[high] - mean[low]) <= noise:
            line += (f" **Not meaningful**: the gap AUC[{high_label}] − AUC[{low_label}] = "
                     f"{mean[high] - mean[low]:.4f} is within the seed noise (sample std up to {noise:.4f}).")
    return line


def run_configs(config_paths: list[str], labels: list[str] | None, seeds: list[int], out: Path, docs: list[Path],
                command: str, note: str = "", overrides: list[str] | tuple[str, ...] = (), section: str = "ecommerce",
                title: str = "E-commerce catalogue: video semantics") -> None:
    """Configs mode: every config file is one variant; runs in seed-major order under ``out/<stem>/seed<s>``."""
    stems = [Path(p).stem for p in config_paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"--configs {config_paths}: config file stems must be distinct (runs go to <out>/<stem>)")
    if labels is not None and len(labels) != len(config_paths):
        raise ValueError(f"--labels {labels}: expected {len(config_paths)} labels, one per --configs file")
    labels = labels if labels is not None else stems
    configs = {stem: load_experiment(p, overrides) for stem, p in zip(stems, config_paths)}
    for config in configs.values():
        config.train.progress = False
    for seed in seeds:
        for stem, base in configs.items():
            run_dir = out / stem / f"seed{seed}"
            if (run_dir / "metrics.json").is_file():
                log.info("reusing %s", run_dir)
                continue
            config = copy.deepcopy(base)
            config.train.seed = seed
            t0 = time.perf_counter()
            result = train(config, run_dir, overwrite=True)  # finished runs were reused above
            log.info("%s seed %d: test auc %.4f (%.0f s)", stem, seed, result["test"]["auc"], time.perf_counter() - t0)
            for doc in docs:
                write_configs_doc(doc, out, configs, labels, seeds, command, note, section, title)
    for doc in docs:
        write_configs_doc(doc, out, configs, labels, seeds, command, note, section, title)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/ml100k_xdeepfm.yaml", help="MovieLens mode: the base ranking YAML")
    parser.add_argument("--configs", nargs="+", help="configs mode: one variant per config file (see above)")
    parser.add_argument("--labels", nargs="+", help="configs mode: table labels (default: the config stems)")
    parser.add_argument("--section", default="ecommerce",
                        help="configs mode: the marked section of --doc to write (<!-- NAME:start -->; default ecommerce)")
    parser.add_argument("--title", default="E-commerce catalogue: video semantics",
                        help="configs mode: the section's heading")
    parser.add_argument("--note", default="", help="configs mode: text put under the section heading "
                        "(e.g. how the data and the semantics were made)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds (default 0 1 2)")
    parser.add_argument("--splits", nargs="+", default=["random", "cold_item"],
                        choices=["random", "cold_item", "cold_user", "temporal"],
                        help="MovieLens mode: the splits to compare on")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="MovieLens mode: the variants to train")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"),
                        help="study directory: the runs and <out>/results.md (default runs/compare)")
    parser.add_argument("--doc", type=Path, help="also rewrite this tracked results file (e.g. docs/results_ranking.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of every config (dotted, repeatable), e.g. --set train.epochs=2")
    parser.set_defaults(prog=parser.prog)


def run(args: argparse.Namespace) -> int:
    out = args.out
    docs = [out / "results.md", *([args.doc] if args.doc else [])]
    for doc in docs:
        if doc.is_dir():
            raise ValueError(f"{doc}: is a directory, expected a markdown file")
    words = [*(["--configs", *args.configs] if args.configs else ["--config", str(args.config)]),
             *(["--labels", *args.labels] if args.labels else []), *(["--note", args.note] if args.note else []),
             *(["--section", args.section, "--title", args.title] if args.configs and args.section != "ecommerce" else []),
             "--seeds", *map(str, args.seeds), "--out", str(out), *(["--doc", str(args.doc)] if args.doc else []),
             *[word for item in args.overrides for word in ("--set", item)]]
    command = f"{args.prog} {shlex.join(words)}"  # the study's own command, as the doc records it
    if args.configs:
        run_configs(args.configs, args.labels, args.seeds, out, docs, command, args.note, args.overrides, args.section,
                    args.title)
        print(docs[0].read_text())
        return 0
    base = load_experiment(args.config, args.overrides)
    base.train.progress = False
    for split in args.splits:
        for seed in args.seeds:
            for variant in args.variants:
                run_dir = out / split / variant / f"seed{seed}"
                if (run_dir / "metrics.json").is_file():
                    log.info("reusing %s", run_dir)
                    continue
                t0 = time.perf_counter()
                result = train(variant_config(base, variant, split, seed), run_dir, overwrite=True)
                log.info("%s %s seed %d: test auc %.4f (%.0f s)", split, variant, seed, result["test"]["auc"],
                         time.perf_counter() - t0)
                for doc in docs:
                    write_doc(doc, out, args.splits, args.seeds, command, base)
    for doc in docs:
        write_doc(doc, out, args.splits, args.seeds, command, base)
    print(docs[0].read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m xdeepfm.compare", __doc__.split("\n\n")[0], add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
