"""xDeepFM ranking speed on MovieLens-100K: our ``XDeepFMRanker`` against stock deepctr-torch.

Three trainers on the same ML-100K training rows (``configs/ml100k_xdeepfm.yaml``: random split,
the same fitted ``FeaturePipeline``, the same sizes, Adam, lr and batch size 1024):

1. **ours, no text**: ``XDeepFMRanker`` over the non-text fields (categorical, multi-valued,
   numeric), trained with ``xdeepfm.train.train_epoch`` (the loop ``train.py`` runs);
2. **ours + BERT title**: the same plus the 384-d all-MiniLM-L6-v2 title vectors. The vectors are
   computed (or read from the on-disk text cache) while the inputs are built, *before* any clock
   starts, so BERT encoding is not part of the timing -- exactly as in ``train.py``, where the
   vectors are fixed inputs computed once;
3. **stock**: ``deepctr_torch.models.xDeepFM`` over the same non-text fields (built by
   ``xdeepfm.baseline.build_stock_model``), trained through its own ``model.fit(x, y,
   batch_size=1024, epochs=1)``, the way users run it. Its whole ``fit`` call is timed: the
   input concatenation, its ``DataLoader``, forward, loss, backward and the optimizer steps.

**Training rows/s** = rows / wall time of one full epoch (forward + backward + optimizer step on
every batch). Before the first round each trainer runs ``--warmup-batches`` untimed batches.
The measurements alternate -- ours (no text), stock, ours (+ text), stock's next round, ... --
``--repeats`` times in this one process, and min / median over rounds are reported; the ratio
ours / stock is median over median from the same run.

**Inference rows/s** on the test split at batch 1024: ours in eval mode under
``torch.inference_mode`` (``xdeepfm.train.predict``) against stock ``model.predict(x,
batch_size=1024)``, alternating the same way.

``--profile`` adds a short ``torch.profiler`` look at a few training batches of each trainer (top
operators by self CPU time).

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/xdeepfm_speed.py --repeats 3 --out docs/performance.md
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import io
import logging
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import cpu_model, git_revision, loadavg, setup, write_section  # noqa: E402

if str(REPO) not in sys.path:  # run as a script from anywhere: import the checkout's packages
    sys.path.insert(0, str(REPO))

from xdeepfm.baseline import NON_TEXT_KINDS, build_stock_model  # noqa: E402
from xdeepfm.data.movielens import default_root, load_movielens_splits  # noqa: E402
from xdeepfm.experiment import RankingTrainConfig, load_experiment  # noqa: E402
from xdeepfm.features import FeaturePipeline  # noqa: E402
from xdeepfm.model import XDeepFMRanker, stack_inputs  # noqa: E402
from xdeepfm.train import predict, train_epoch  # noqa: E402

log = logging.getLogger("bench.xdeepfm_speed")

CONFIG = "configs/ml100k_xdeepfm.yaml"
BATCH = 1024
PROFILE_STEPS = 3
DEFAULT_ROWS = 20 * BATCH  # keeps the default run (3 rounds x 3 trainers) at a few minutes on 2 loaded cores
HEADING = "## xDeepFM ranking: training and inference speed (ours vs stock deepctr-torch)"


# --------------------------------------------------------------------------------------------
# The three trainers
# --------------------------------------------------------------------------------------------


@dataclass
class Timings:
    """Rows/s of every round for one trainer."""

    name: str
    cin_fields: int
    cin_macs: int
    parameters: int
    train: list[float] = field(default_factory=list)
    infer: list[float] = field(default_factory=list)


class OursTrainer:
    """``XDeepFMRanker`` trained by ``xdeepfm.train.train_epoch`` on pre-built input tensors."""

    def __init__(self, name: str, fields: list, config, X: dict[str, np.ndarray], y: np.ndarray,
                 test: dict[str, np.ndarray], seed: int = 0) -> None:
        from xdeepfm.train import SplitData, make_optimizer

        self.name = name
        self.model = XDeepFMRanker(fields, config.model, seed=seed)
        self.train_config = RankingTrainConfig(batch_size=BATCH, optimizer=config.train.optimizer, lr=config.train.lr,
                                               weight_decay=config.train.weight_decay, progress=False)
        self.optimizer = make_optimizer(self.model, self.train_config)
        users = np.zeros(len(y), np.int64)  # not used by train_epoch
        self.data = SplitData(torch.from_numpy(stack_inputs(X, self.model.columns)), torch.from_numpy(y), users)
        self.test_X = torch.from_numpy(stack_inputs(test, self.model.columns))
        self.rounds = 0

    @property
    def n_rows(self) -> int:
        return len(self.data.X)

    def warm_up(self, batches: int) -> None:
        n = min(self.n_rows, batches * BATCH)
        subset = type(self.data)(self.data.X[:n], self.data.y[:n], self.data.users[:n])
        train_epoch(self.model, self.optimizer, subset, self.train_config, torch.Generator().manual_seed(-1))
        predict(self.model, self.test_X[: 2 * BATCH], BATCH)

    def train_one_epoch(self) -> float:
        """Seconds for one full epoch."""
        generator = torch.Generator().manual_seed(self.rounds)
        self.rounds += 1
        t0 = time.perf_counter()
        train_epoch(self.model, self.optimizer, self.data, self.train_config, generator)
        return time.perf_counter() - t0

    def infer(self) -> float:
        t0 = time.perf_counter()
        predict(self.model, self.test_X, BATCH)  # eval mode + torch.inference_mode
        return time.perf_counter() - t0

    def profile_step(self):
        """One training batch, for the profiler."""
        idx = torch.arange(BATCH)
        self.model.train()
        logits = self.model(self.data.X[idx])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, self.data.y[idx]) + self.model.regularization_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loss.item()


class StockTrainer:
    """``deepctr_torch.models.xDeepFM`` trained and evaluated through its own ``fit``/``predict``."""

    def __init__(self, pipeline: FeaturePipeline, config, X: dict[str, np.ndarray], y: np.ndarray,
                 test: dict[str, np.ndarray], seed: int = 0) -> None:
        self.name = "stock deepctr-torch xDeepFM"
        self.model = build_stock_model(pipeline, config.model, seed)
        optim_cls = torch.optim.AdamW if config.train.optimizer == "adamw" else torch.optim.Adam
        with contextlib.redirect_stdout(io.StringIO()):
            self.model.compile(optim_cls(self.model.parameters(), lr=config.train.lr,
                                         weight_decay=config.train.weight_decay), "binary_crossentropy")
        names = list(self.model.feature_index)
        self.X = {k: X[k] for k in names}
        self.y = y
        self.test = {k: test[k] for k in names}
        self.rounds = 0

    @property
    def n_rows(self) -> int:
        return len(self.y)

    def _fit(self, X: dict[str, np.ndarray], y: np.ndarray) -> None:
        with contextlib.redirect_stdout(io.StringIO()):  # fit prints the device and a summary line
            self.model.fit(X, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=True)

    def warm_up(self, batches: int) -> None:
        n = min(self.n_rows, batches * BATCH)
        self._fit({k: v[:n] for k, v in self.X.items()}, self.y[:n])
        self.model.predict({k: v[: 2 * BATCH] for k, v in self.test.items()}, batch_size=BATCH)

    def train_one_epoch(self) -> float:
        np.random.seed(self.rounds)
        torch.manual_seed(self.rounds)  # deepctr's DataLoader shuffles with torch's global RNG
        self.rounds += 1
        t0 = time.perf_counter()
        self._fit(self.X, self.y)
        return time.perf_counter() - t0

    def infer(self) -> float:
        t0 = time.perf_counter()
        self.model.predict(self.test, batch_size=BATCH)
        return time.perf_counter() - t0

    def profile_step(self):
        """A ``fit`` over one batch of rows (its DataLoader and bookkeeping included)."""
        self._fit({k: v[:BATCH] for k, v in self.X.items()}, self.y[:BATCH])


def cin_work(model: torch.nn.Module) -> tuple[int, int]:
    """(fields m entering the CIN, multiply-adds per row per embedding dim in its 1x1 convolutions).

    Layer k maps H_{k-1} * m channels (the outer products z^k) to H_k, so the work is
    sum_k H_{k-1} * m * H_k (Lian et al. eq. 6), read from the model's own ``conv1ds``.
    """
    cin = model.cin
    m = cin.field_nums[0]
    return m, sum(conv.in_channels * conv.out_channels for conv in cin.conv1ds)


CIN_OPS = ("aten::convolution_backward", "aten::mkldnn_convolution")


def profile(trainer, steps: int = PROFILE_STEPS, top: int = 12) -> tuple[str, float]:
    """The profiler's top operators (self CPU time) over ``steps`` training batches, and the share
    of self CPU time in the CIN's convolutions (forward and backward)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trainer.profile_step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.profile_step()
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    cin = sum(e.self_cpu_time_total for e in averages if e.key in CIN_OPS)
    table = averages.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48)
    return table, cin / total if total else 0.0


# --------------------------------------------------------------------------------------------
# Machine description and the docs section
# --------------------------------------------------------------------------------------------










def _k(x: float) -> str:
    return f"{x / 1000:,.1f}k"


def render(r: dict) -> str:
    """Markdown for the section between the markers."""
    m = r["machine"]
    stock = r["timings"]["stock"]
    lines = [
        f"Regenerate with `{r['command']}` (from the repository root, `HF_HUB_OFFLINE=1`).",
        "",
        f"- Date: {r['date']}; git revision: {r['git']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']} with {m['threads']} intra-op thread(s); "
        f"deepctr-torch {m['deepctr']}; Python {m['python']}"
        + (" (fewer threads than cores on purpose: on a loaded, shared machine intra-op threads wait on each other "
           "and every op slows down; `--threads` sets it for all three trainers)" if m["threads"] < m["cores"] else ""),
        f"- Load average (1/5/15 min) at start: **{m['load_before']}**; at the end: {m['load_after']}. The machine is "
        "shared with other jobs, so absolute figures move from run to run; compare rows of the same run.",
        f"- Data: MovieLens-100K (`{r['data_root']}`), `{CONFIG}` random split: {r['train_rows']:,} training rows"
        f"{' (first ' + format(r['train_rows'], ',') + ' of ' + format(r['all_train_rows'], ',') + ')' if r['train_rows'] < r['all_train_rows'] else ''}, "
        f"{r['test_rows']:,} test rows. Same fitted feature pipeline, sizes (embedding 16, CIN {r['cin']}, DNN {r['dnn']}), "
        f"Adam lr {r['lr']}, batch {BATCH} for all three.",
        f"- Non-text fields (all three): {', '.join(r['non_text_fields'])}. Ours + BERT title adds `title` as a "
        f"{r['text_dim']}-d all-MiniLM-L6-v2 sentence vector, **precomputed**: the vectors come from the on-disk text "
        f"cache (or are encoded) while the inputs are built, before any timing, so BERT encoding is *not* in these "
        f"figures (it is not in training either: `train.py` encodes each title once). BERT forward passes during "
        f"setup in this run: {r['text_encoder_calls']}.",
        f"- Training: per round, one epoch over these {r['train_rows']:,} rows ({-(-r['train_rows'] // BATCH)} batches: "
        f"forward + loss + backward + optimizer step on every batch; ours via "
        f"`xdeepfm.train.train_epoch`, stock via its own `model.fit(x, y, batch_size={BATCH}, epochs=1)` with the whole "
        f"`fit` call timed, i.e. its input concatenation and `DataLoader` included), after {r['warmup_batches']} "
        f"untimed warm-up batches each; {r['repeats']} rounds alternating ours (no text), stock, ours (+ title), "
        f"in one process. Inference: the test split at batch {BATCH}, ours in eval mode under `torch.inference_mode`, "
        "stock `model.predict`, alternating the same way.",
        "",
        "| model | train rows/s, median | min | per round | ours / stock (train) | infer rows/s, median | min | ours / stock (infer) | CIN fields m | CIN multiply-adds / row / dim | parameters |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    s_train, s_infer = statistics.median(stock["train"]), statistics.median(stock["infer"])
    for key in ("ours_notext", "ours_text", "stock"):
        t = r["timings"][key]
        tr_min, tr_med = min(t["train"]), statistics.median(t["train"])
        in_min, in_med = min(t["infer"]), statistics.median(t["infer"])
        ratio_t = "—" if key == "stock" else f"**{tr_med / s_train:.2f}x**"
        ratio_i = "—" if key == "stock" else f"{in_med / s_infer:.2f}x"
        rounds = ", ".join(_k(x) for x in t["train"])
        lines.append(f"| {t['name']} | **{_k(tr_med)}** | {_k(tr_min)} | {rounds} | {ratio_t} | {_k(in_med)} | {_k(in_min)} "
                     f"| {ratio_i} | {t['cin_fields']} | {t['cin_macs']:,} | {t['parameters']:,} |")
    lines += ["", r["verdict"]]
    if r.get("profiles"):
        shares = ", ".join(f"{name}: {p['cin_share']:.0%}" for name, p in r["profiles"].items())
        lines += ["", f"Where the time goes (`--profile`: torch.profiler over {PROFILE_STEPS} training batches of {BATCH}, top "
                  f"operators by self CPU time). Share of self CPU time in the CIN's 1x1 convolutions (forward + backward): "
                  f"{shares}.", ""]
        for name, p in r["profiles"].items():
            table = p["table"]
            lines += [f"<details><summary>{name}</summary>", "", "```", table.rstrip(), "```", "", "</details>", ""]
    return "\n".join(lines) + "\n"


def verdict(r: dict) -> str:
    """Markdown bullets: ours / stock in words, and (when slower) where the extra work is."""
    t = r["timings"]
    med = {k: statistics.median(v["train"]) for k, v in t.items()}
    inf = {k: statistics.median(v["infer"]) for k, v in t.items()}
    lines = ["**Result (medians of this run):**", ""]
    for key, label in (("ours_notext", "Ours without text"), ("ours_text", "Ours with the BERT title vectors")):
        ratio = med[key] / med["stock"]
        word = "faster than" if ratio >= 1.05 else ("slower than" if ratio <= 0.95 else "about as fast as (within 5%)")
        lines.append(f"- {label} trains **{word}** stock deepctr-torch: {ratio:.2f}x its rows/s.")
    extra = t["ours_text"]["cin_macs"] / t["stock"]["cin_macs"] - 1
    added = t["ours_text"]["cin_fields"] - t["stock"]["cin_fields"]
    share = r.get("profiles", {}).get(t["ours_text"]["name"], {}).get("cin_share")
    where = f"; the CIN's convolutions take {share:.0%} of its training CPU time in the profile below" if share else ""
    lines.append(
        f"- Cost of the title: ours + title trains at {med['ours_text'] / med['ours_notext']:.2f}x the rows/s of ours "
        f"without text. The title enters the CIN as {added} field{'s' if added != 1 else ''} "
        f"(`model.fields_per_vector`; m = {t['ours_text']['cin_fields']} instead of "
        f"{t['stock']['cin_fields']}: {extra:+.0%} CIN multiply-adds{where}), plus the {r['text_dim']}-to-"
        f"{added * r['embedding_dim']} title projection and the {r['text_dim']}-wide linear term: work the stock model, which "
        "has no title, does not do. Without the title, ours runs the same deepctr blocks (Linear, CIN, DNN) as stock, "
        "and its loop indexes pre-built tensors where stock's `fit` goes through a per-row `DataLoader`.")
    lines.append(f"- Inference rows/s against stock's `predict`: {inf['ours_notext'] / inf['stock']:.2f}x without text, "
                 f"{inf['ours_text'] / inf['stock']:.2f}x with the title vectors.")
    return "\n".join(lines)


def render_table(r: dict) -> str:
    rows = [f"{'model':<34} {'train rows/s (min/median)':>26} {'infer rows/s (min/median)':>26}"]
    for t in r["timings"].values():
        tr, inf = (min(t["train"]), statistics.median(t["train"])), (min(t["infer"]), statistics.median(t["infer"]))
        rows.append(f"{t['name']:<34} {f'{tr[0]:,.0f} / {tr[1]:,.0f}':>26} {f'{inf[0]:,.0f} / {inf[1]:,.0f}':>26}")
    rows += [line.replace("**", "") for line in r["verdict"].splitlines() if line.strip()]
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS,
                   help=f"training rows per epoch: the first N of the training split (default {DEFAULT_ROWS} = "
                        f"{DEFAULT_ROWS // BATCH} batches; 0 = the whole split, 80,000 rows)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds (one epoch of each trainer per round)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads (all trainers)")
    p.add_argument("--warmup-batches", type=int, default=5, help="untimed training batches per trainer before round 1")
    p.add_argument("--profile", action="store_true", help="add a torch.profiler look at a few training batches of each")
    p.add_argument("--out", default=None, help="markdown file whose xdeepfm_speed section is rewritten")
    args = p.parse_args(argv)
    for name in ("repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.rows != 0 and args.rows < BATCH:
        p.error(f"--rows {args.rows}: expected at least one batch ({BATCH})")
    setup(args.threads, quiet=("xdeepfm",))
    load_before = loadavg()
    log.info("load average at start: %s", load_before)

    # ---- inputs, built before any clock starts (text vectors included)
    config = load_experiment(REPO / CONFIG)
    if not Path(config.features.text_cache_dir).is_absolute():
        config.features.text_cache_dir = str(REPO / config.features.text_cache_dir)
    splits = load_movielens_splits(config.data)
    train_frame = splits["train"] if args.rows == 0 else splits["train"].iloc[: args.rows]
    pipeline = FeaturePipeline(config.features).fit(splits["train"], "train")
    X = pipeline.transform(train_frame, "train")
    test = pipeline.transform(splits["test"], "test")
    text_calls = sum(cache.encoder_calls for cache in pipeline._sentence_caches.values())
    y = train_frame["label"].to_numpy(np.float32, copy=True)
    fields = [pipeline.fitted[f.name] for f in pipeline.spec.fields]
    non_text = [f for f in fields if f.spec.kind in NON_TEXT_KINDS]
    text_fields = [f for f in fields if f.spec.kind == "text"]

    trainers = {
        "ours_notext": OursTrainer("ours, no text", non_text, config, X, y, test),
        "stock": StockTrainer(pipeline, config, X, y, test),
        "ours_text": OursTrainer("ours + BERT title vectors", fields, config, X, y, test),
    }
    assert len({t.n_rows for t in trainers.values()}) == 1
    for key, t in trainers.items():
        log.info("warm-up: %s (%d batches)", t.name, args.warmup_batches)
        t.warm_up(args.warmup_batches)

    timings = {key: Timings(t.name, *cin_work(t.model), sum(p.numel() for p in t.model.parameters()))
               for key, t in trainers.items()}
    order = ["ours_notext", "stock", "ours_text"]
    n_rows, n_test = len(y), len(splits["test"])
    for r in range(args.repeats):
        for key in order:
            seconds = trainers[key].train_one_epoch()
            timings[key].train.append(n_rows / seconds)
            log.info("round %d train %-28s %8.0f rows/s (%.2f s)", r + 1, trainers[key].name, n_rows / seconds, seconds)
    for r in range(args.repeats):
        for key in order:
            seconds = trainers[key].infer()
            timings[key].infer.append(n_test / seconds)
            log.info("round %d infer %-28s %8.0f rows/s (%.3f s)", r + 1, trainers[key].name, n_test / seconds, seconds)

    profiles = {}
    if args.profile:
        for key in order:
            log.info("profiling %s", trainers[key].name)
            table, share = profile(trainers[key])
            profiles[trainers[key].name] = {"table": table, "cin_share": share}

    import deepctr_torch

    shown = ["python", "bench/xdeepfm_speed.py", *(argv if argv is not None else sys.argv[1:])]
    results = {
        "command": shlex.join(shown),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git_revision(),
        "machine": {
            "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "deepctr": deepctr_torch.__version__, "python": platform.python_version(),
            "load_before": load_before, "load_after": loadavg(),
        },
        "data_root": os.path.relpath(default_root(), REPO) if config.data.root is None else config.data.root,
        "train_rows": n_rows, "all_train_rows": len(splits["train"]), "test_rows": n_test,
        "cin": list(config.model.cin_layer_sizes), "dnn": list(config.model.dnn_hidden_units), "lr": config.train.lr,
        "non_text_fields": [f.spec.name for f in non_text],
        "text_dim": text_fields[0].dim if text_fields else 0,
        "text_encoder_calls": text_calls,
        "warmup_batches": args.warmup_batches, "repeats": args.repeats,
        "embedding_dim": config.model.embedding_dim,
        "timings": {k: dataclasses.asdict(t) for k, t in timings.items()},
        "profiles": profiles,
    }
    results["verdict"] = verdict(results)
    if args.out:
        write_section(Path(args.out), HEADING, "xdeepfm_speed", render(results))
        log.info("wrote the xdeepfm_speed section of %s", args.out)
    print(render_table(results))
    for name, prof in profiles.items():
        print(f"\n== {name} (CIN convolutions: {prof['cin_share']:.0%} of self CPU time)\n{prof['table']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
