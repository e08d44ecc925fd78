"""mmfusion training and inference speed on this CPU, optionally against MMSA's Self-MM.

What is timed (all on the real data path: ``load_mmsa`` → ``NormStats.fit`` → ``make_loader``):

* **training clips/s**: the trainer's step (``mmfusion/trainer.py``) — next batch from the
  shuffled train loader (batch ``data.batch_size``, 32 in the configs), forward, ``multitask_loss``
  against the SLGM labels and weights, backward, gradient clipping, AdamW step, then
  ``SLGM.update_features`` and ``SLGM.update_labels`` (the label update runs as from epoch 2 on).
  ``--warmup`` untimed steps first, then ``--steps`` timed ones; clips/s = clips / wall time.
  TensorBoard logging is left out.
* **inference clips/s** at batch 1 and batch 64: eval mode under ``torch.inference_mode``, the
  model's forward only, on batches of the test split collated before the clock starts.

With ``--reference`` the same invocation also runs ``bench/mmsa_reference/selfmm_speed.py`` (MMSA's
Self-MM, the bundled MiniLM as its BERT) in the separate venv ``.venv-mmsa`` on the same pickle, with
the same batch size, warm-up, steps and threads, alternating ours and the reference's training
measurement ``--rounds`` times (ours, ref, ours, ref, ...) so both see the same machine load; the
ratio reported is median(ours) / median(ref).

Usage::

    python bench/mmfusion_speed.py --data /tmp/bench_data/synthmosi_mosi_s0.pkl --reference \\
        --out docs/performance.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import itertools
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import cpu_model, git_revision, loadavg, setup, write_section  # noqa: E402

if str(REPO) not in sys.path:  # run as a script from anywhere: import the checkout's mmfusion
    sys.path.insert(0, str(REPO))

from mmcore.config import build, load_yaml  # noqa: E402
from mmfusion.data.batch import MMSABatch  # noqa: E402
from mmfusion.data.mmsa import MMSAData, MMSADataset, NormStats, collate_mmsa, load_mmsa, make_loader  # noqa: E402
from mmfusion.experiment import SentimentExperiment, build_model_config  # noqa: E402
from mmfusion.losses import multitask_loss  # noqa: E402
from mmfusion.model import MultimodalSentimentModel  # noqa: E402
from mmfusion.slgm import SLGM  # noqa: E402
from mmfusion.train import data_dims  # noqa: E402

log = logging.getLogger("bench.mmfusion_speed")

DEFAULT_CONFIG = "configs/synthmosi_finetune.yaml"  # MiniLM fine-tuned in the loop, as Self-MM does
ABLATION_CONFIG = "configs/synthmosi_default.yaml"  # the main job: precomputed MiniLM features
REFERENCE_SCRIPT = REPO / "bench" / "mmsa_reference" / "selfmm_speed.py"
REFERENCE_PYTHON = REPO / ".venv-mmsa" / "bin" / "python"
GUIDE_SELFMM_CLIPS_PER_S = 28.0  # GUIDE.md section 6, measured earlier on this kind of machine
HEADING = "## mmfusion training and inference speed"


@dataclass
class TrainTiming:
    clips_per_s: float
    steps: int
    clips: int
    seconds: float
    step_ms_median: float
    step_ms_max: float


@dataclass
class InferTiming:
    batch_size: int
    clips_per_s: float
    clips: int
    seconds: float


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


class MMFusionBench:
    """One config's model, optimizer, SLGM and loaders, built the way ``trainer.train`` builds them."""

    def __init__(self, cfg: SentimentExperiment, data: MMSAData, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.cfg = cfg
        self.text_source = cfg.model.text.source
        train_split = data.splits["train"]
        self.norm = NormStats.fit(train_split, include_text=self.text_source == "features") if cfg.data.normalize else None
        self.model = MultimodalSentimentModel(build_model_config(cfg.model, data_dims(data)))
        self.optimizer = torch.optim.AdamW(self.model.param_groups(cfg.train.lr_text, cfg.train.lr, cfg.train.weight_decay))
        self.slgm = (
            SLGM(len(train_split.labels), self.model.feature_dims, torch.as_tensor(train_split.labels, dtype=torch.float32))
            if self.model.cfg.use_slgm
            else None
        )
        loader = make_loader(train_split, self.norm, cfg.data.batch_size, shuffle=True, seed=seed, text_source=self.text_source)
        self.batches = itertools.cycle(loader)  # a new shuffled pass each time the loader runs out
        self.test = data.splits["test"]
        # Label update as in epoch >= slgm_start_epoch, so the timed step does all of SLGM's work.
        self.slgm_epoch = max(2, cfg.train.slgm_start_epoch)

    def train_step(self) -> int:
        """One trainer step (see ``mmfusion/trainer.py``); returns the batch's clip count."""
        batch: MMSABatch = next(self.batches)
        output = self.model(batch)
        if self.slgm is not None:
            labels, weights = self.slgm.labels(batch.index), self.slgm.loss_weights(batch.index)
        else:
            labels, weights = {"M": batch.label}, {"M": torch.ones_like(batch.label)}
        loss, _ = multitask_loss(output, labels, weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        if self.slgm is not None:
            self.slgm.update_features(batch.index, output.features)
            self.slgm.update_labels(batch.index, self.slgm_epoch)
        loss.item()  # the trainer reads the loss every step
        return len(batch)

    def time_training(self, warmup: int, steps: int) -> TrainTiming:
        self.model.train()
        for _ in range(warmup):
            self.train_step()
        clips, step_s = 0, []
        started = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            clips += self.train_step()
            step_s.append(time.perf_counter() - t0)
        seconds = time.perf_counter() - started
        return TrainTiming(clips / seconds, steps, clips, seconds, 1000 * _median(step_s), 1000 * max(step_s))

    def _test_batches(self, batch_size: int, n_clips: int) -> list[MMSABatch]:
        dataset = MMSADataset(self.test, self.norm, self.text_source)
        n = min(n_clips, len(dataset))
        return [collate_mmsa([dataset[i] for i in range(s, min(s + batch_size, n))]) for s in range(0, n, batch_size)]

    def time_inference(self, batch_size: int, n_clips: int, warmup_batches: int = 2) -> InferTiming:
        batches = self._test_batches(batch_size, n_clips)
        self.model.eval()
        with torch.inference_mode():
            for b in batches[:warmup_batches]:
                self.model(b)
            started = time.perf_counter()
            for b in batches:
                self.model(b)
            seconds = time.perf_counter() - started
        self.model.train()
        clips = sum(len(b) for b in batches)
        return InferTiming(batch_size, clips / seconds, clips, seconds)


# --------------------------------------------------------------------------------------------
# The reference (MMSA's Self-MM in its own venv)
# --------------------------------------------------------------------------------------------


def run_reference(python: Path, data: Path, batch_size: int, warmup: int, steps: int, threads: int) -> dict:
    """One Self-MM training measurement in a subprocess; returns its JSON result (raises with its stderr tail)."""
    cmd = [
        str(python), str(REFERENCE_SCRIPT), "--data", str(data), "--batch-size", str(batch_size),
        "--warmup", str(warmup), "--steps", str(steps), "--threads", str(threads), "--json",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"reference run failed (exit {proc.returncode}): {shlex.join(cmd)}\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"reference run printed no JSON result: {shlex.join(cmd)}\nstdout tail: {proc.stdout[-2000:]}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------
# Machine description and the docs section
# --------------------------------------------------------------------------------------------










def fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def render(results: dict) -> str:
    """The markdown of this bench's section (everything between the markers)."""
    m = results["machine"]
    lines = [
        f"Regenerate with `{results['command']}` (from the repository root).",
        "",
        f"- Date: {results['date']}; git revision: {results['git']}",
        f"- Machine: {m['cpu']}, {m['cores']} cores; torch {m['torch']} with {m['threads']} intra-op thread(s); Python {m['python']}",
        f"- Load average (1/5/15 min) before: {m['load_before']}; after: {m['load_after']}; "
        f"highest 1-min value sampled after each measurement: {m['load_1min_max']:.2f} on {m['cores']} cores "
        "(the machine is shared with other jobs: figures vary run to run, compare figures from the same run)",
        f"- Data: `{results['data']}` ({results['train_clips']} train / {results['test_clips']} test clips); "
        f"training: batch {results['batch_size']} from the shuffled train loader, {results['warmup']} warm-up steps, then "
        f"{results['steps']} timed steps (loader + forward + loss + backward + grad clip + AdamW + SLGM feature and label update), "
        f"{results['rounds']} round(s); inference: eval mode, `torch.inference_mode`, forward only on pre-collated test batches.",
        "",
        "| config | text branch | train clips/s (median of rounds) | per round | step ms (median) | infer clips/s, batch 1 | infer clips/s, batch 64 |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in results["configs"]:
        rounds = ", ".join(fmt(t["clips_per_s"]) for t in row["train"])
        step_ms = _median([t["step_ms_median"] for t in row["train"]])
        infer = {i["batch_size"]: i["clips_per_s"] for i in row["infer"]}
        lines.append(
            f"| `{row['config']}` | {row['text']} | **{fmt(row['train_median'])}** | {rounds} | {fmt(step_ms, 0)} "
            f"| {fmt(infer.get(1))} | {fmt(infer.get(64))} |"
        )
    lines.append("")
    ref = results.get("reference")
    ours = results["configs"][0]
    if ref and ref.get("train"):
        rounds = ", ".join(fmt(t["clips_per_s"]) for t in ref["train"])
        lines += [
            "Reference, measured in the same run, alternating with the first row's training rounds: "
            f"MMSA {ref.get('mmsa_version', '?')} Self-MM (`{ref['command']}`, torch {ref.get('torch', '?')}, "
            f"transformers {ref.get('transformers', '?')}, its BERT = the bundled all-MiniLM-L6-v2, fine-tuned whole as Self-MM does), "
            f"same pickle, batch {results['batch_size']}, warm-up, steps and threads:",
            "",
            "| model | train clips/s (median) | per round |",
            "| --- | ---: | --- |",
            f"| mmfusion (`{ours['config']}`) | {fmt(ours['train_median'])} | {', '.join(fmt(t['clips_per_s']) for t in ours['train'])} |",
            f"| MMSA Self-MM | {fmt(ref['train_median'])} | {rounds} |",
            "",
            f"**ours / Self-MM = {ours['train_median'] / ref['train_median']:.2f}x** (training clips/s, same run).",
        ]
        if ref.get("notes"):
            lines += ["", "Reference notes: " + ref["notes"]]
    else:
        why = (ref or {}).get("error", "the bench was run without --reference")
        lines += [
            f"Reference: MMSA's Self-MM was **not measured in this run** ({why}). GUIDE.md section 6 records "
            f"about {GUIDE_SELFMM_CLIPS_PER_S:.0f} clips/s for Self-MM with the bundled MiniLM on this kind of machine, "
            f"measured earlier under unknown load: ours / that figure = {ours['train_median'] / GUIDE_SELFMM_CLIPS_PER_S:.2f}x "
            "(not a same-run comparison).",
        ]
    return "\n".join(lines) + "\n"


def render_table(results: dict) -> str:
    """A plain-text table for the terminal."""
    rows = [f"{'config':<38} {'train clips/s':>14} {'infer b1':>10} {'infer b64':>10}"]
    for row in results["configs"]:
        infer = {i["batch_size"]: i["clips_per_s"] for i in row["infer"]}
        rows.append(f"{row['config']:<38} {fmt(row['train_median']):>14} {fmt(infer.get(1)):>10} {fmt(infer.get(64)):>10}")
    ref = results.get("reference")
    if ref and ref.get("train"):
        rows.append(f"{'MMSA Self-MM (reference)':<38} {fmt(ref['train_median']):>14} {'':>10} {'':>10}")
        rows.append(f"ours / Self-MM (training): {results['configs'][0]['train_median'] / ref['train_median']:.2f}x")
    elif ref:
        rows.append(f"reference not measured: {ref.get('error')}")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def load_config(path: str, data_path: str | None) -> SentimentExperiment:
    cfg = build(SentimentExperiment, load_yaml(REPO / path if not Path(path).is_absolute() else path), where=path)
    if data_path is not None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=data_path))
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"main config (default {DEFAULT_CONFIG})")
    p.add_argument("--ablation-config", default=ABLATION_CONFIG, help="second config, measured once; '' to skip")
    p.add_argument("--data", default=None, help="MMSA pickle (default: the config's data.path)")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per round")
    p.add_argument("--warmup", type=int, default=5, help="untimed training steps before each round")
    p.add_argument("--rounds", type=int, default=2, help="training rounds of the main config (alternating with the reference)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads (both sides)")
    p.add_argument("--infer-clips-b1", type=int, default=100, help="test clips timed at batch 1")
    p.add_argument("--infer-clips-b64", type=int, default=640, help="test clips timed at batch 64")
    p.add_argument("--reference", action="store_true", help="also measure MMSA's Self-MM (needs .venv-mmsa)")
    p.add_argument("--reference-python", default=str(REFERENCE_PYTHON), help="python of the MMSA venv")
    p.add_argument("--out", default=None, help="markdown file whose mmfusion_speed section is rewritten")
    p.add_argument("--json", default=None, help="also write the raw results here")
    args = p.parse_args(argv)
    for name in ("steps", "rounds", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    setup(args.threads)
    load_before = loadavg()
    revision = git_revision()  # at start: the code this process imports is the work tree of now
    load_samples = [os.getloadavg()[0]]  # 1-min load average before and after every measurement
    cfg = load_config(args.config, args.data)
    data_path = Path(cfg.data.path)
    if not data_path.is_absolute():
        data_path = REPO / data_path
    if not data_path.exists():
        p.error(
            f"--data {data_path}: no such file; generate it with: python -m mmfusion.data.synthetic --size mosi --seed 0 "
            f"--out {data_path} --text-features"
        )
    data = load_mmsa(data_path, nonfinite=cfg.data.nonfinite)
    configs = [(args.config, cfg)]
    if args.ablation_config:
        configs.append((args.ablation_config, load_config(args.ablation_config, str(data_path))))

    reference: dict | None = None
    if args.reference:
        if not Path(args.reference_python).exists():
            reference = {"error": f"{args.reference_python} does not exist (create .venv-mmsa, see bench/README.md)"}
        else:
            py = Path(args.reference_python)
            shown = py.relative_to(REPO) if py.is_relative_to(REPO) else py
            reference = {"train": [], "command": f"{shown} bench/mmsa_reference/selfmm_speed.py"}

    rows = []
    for i, (name, c) in enumerate(configs):
        log.info("building %s", name)
        bench = MMFusionBench(c, data)
        rounds = args.rounds if i == 0 else 1
        train = []
        for r in range(rounds):
            t = bench.time_training(args.warmup, args.steps)
            load_samples.append(os.getloadavg()[0])
            log.info("%s round %d: %.1f train clips/s (median step %.0f ms)", name, r + 1, t.clips_per_s, t.step_ms_median)
            train.append(dataclasses.asdict(t))
            if i == 0 and reference is not None and "error" not in reference:
                try:
                    res = run_reference(Path(args.reference_python), data_path, c.data.batch_size, args.warmup, args.steps, args.threads)
                except RuntimeError as exc:
                    log.error("%s", exc)
                    lines = str(exc).strip().splitlines()
                    reference = {"error": f"{lines[0]} — {lines[-1]}"}
                else:
                    log.info("Self-MM round %d: %.1f train clips/s", r + 1, res["clips_per_s"])
                    reference["train"].append(res)
                    load_samples.append(os.getloadavg()[0])
        infer = [
            dataclasses.asdict(bench.time_inference(1, args.infer_clips_b1)),
            dataclasses.asdict(bench.time_inference(64, args.infer_clips_b64)),
        ]
        rows.append(
            {
                "config": name,
                "text": {"bert": f"MiniLM tokens, finetune={c.model.text.finetune}" + (f" (top {c.model.text.top_layers})" if c.model.text.finetune == "top" else ""),
                         "features": "precomputed MiniLM features"}[c.model.text.source],
                "train": train,
                "train_median": _median([t["clips_per_s"] for t in train]),
                "infer": infer,
            }
        )
        del bench

    if reference is not None and reference.get("train"):
        ref_runs = reference["train"]
        reference.update({k: ref_runs[0].get(k) for k in ("mmsa_version", "torch", "transformers", "notes")})
        reference["train_median"] = _median([t["clips_per_s"] for t in ref_runs])

    shown_argv = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = {
        "command": shlex.join(["python", "bench/mmfusion_speed.py", *shown_argv]),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": revision,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "load_before": load_before,
            "load_after": loadavg(),
            "load_1min_max": max(load_samples),
        },
        "data": str(data_path),
        "train_clips": len(data.splits["train"].labels),
        "test_clips": len(data.splits["test"].labels),
        "batch_size": cfg.data.batch_size,
        "warmup": args.warmup,
        "steps": args.steps,
        "rounds": args.rounds,
        "configs": rows,
        "reference": reference,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.out:
        write_section(Path(args.out), HEADING, "mmfusion_speed", render(results))
        log.info("wrote the mmfusion_speed section of %s", args.out)
    print(render_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
