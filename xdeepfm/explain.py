"""Per-field additive attributions of the ranking logit: why the ranker scored a row as it did.

``attribute(model, X, fields, baseline=...)`` splits each row's logit into one number per input
field (or group of fields) such that

    logit(x) = logit(b) + sum_g phi_g(x)        (completeness, to float precision)

where b is the **baseline row**. The default, ``baseline="oov"``, is "nothing known": every
categorical and multi-valued field at index 0 (the reserved out-of-vocabulary bucket, and the
padding of token lists), every numeric field at 0 (its training mean after the z-score), every
text / vector field at the zero vector (what the pipeline gives an id missing from a vector file).
``baseline="mean"`` keeps the OOV ids but puts each numeric / text / vector column at its mean over
``X``; an explicit (width,) row or (1, width) tensor is used as given.

How phi is computed, per part of ``logit = b0 + linear(x) + cin(x) + dnn(x)``
(``xdeepfm.model.XDeepFMRanker``):

- the **linear part** is additive over fields, so its share is exact and closed-form:
  ``linear(x_g, b_rest) - linear(b)`` per group g (``Attribution.linear``);
- the **CIN + DNN part** (everything but the bias and the linear part) is attributed with the
  Shapley value of the game v(S) = f(x_S, b_rest) over the groups (``Attribution.interaction``):
  **exact** (all 2^G coalitions, G the number of groups) when G <= ``max_exact`` (default 12:
  4,096 model rows per input row), else estimated from ``permutations`` random orders (half of
  them reversed copies, antithetic sampling). Every permutation's marginal contributions telescope
  to v(all) - v(none), so completeness holds exactly for the estimate too; the individual values are
  then unbiased estimates with a sampling error that shrinks as 1 / sqrt(permutations).

Shapley values are the one attribution that is additive, symmetric, gives zero to a field that
never changes the output, and sums to logit(x) - logit(b) (Lundberg & Lee 2017). Fields not named
in ``fields`` each form a group of their own, so the groups always cover the whole row.

    from xdeepfm.explain import attribute
    result = attribute(model, X[:100], {"video semantics": ["video_sentiment", "video_embedding"]})
    result.values        # (100, G) phi per group, columns in result.groups order
    result.baseline_logit + result.values.sum(1)  # == result.logit
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmcore.config import build
from mmcore.loop import checkpoint_file
from mmcore.runtime import command_main
from xdeepfm.checkpoint import load_ranking_checkpoint
from xdeepfm.experiment import RankingExperiment, load_frames
from xdeepfm.model import XDeepFMRanker, stack_inputs

log = logging.getLogger(__name__)

Fields = dict[str, list[str]] | list[str] | None


@dataclass
class Attribution:
    """Attributions of ``n`` rows to ``G`` groups (numpy, float64)."""

    groups: list[str]
    members: dict[str, list[str]]  # group -> the model fields it holds
    values: np.ndarray  # (n, G) phi = linear + interaction
    linear: np.ndarray  # (n, G) exact share of the linear part
    interaction: np.ndarray  # (n, G) Shapley share of the CIN + DNN part
    logit: np.ndarray  # (n,) the model's logit of each row
    baseline_logit: float  # the logit of the baseline row
    method: str  # "exact" or "sampled (P permutations)"

    def completeness_error(self) -> float:
        """max |baseline_logit + sum_g phi_g - logit| over the rows."""
        return float(np.abs(self.baseline_logit + self.values.sum(1) - self.logit).max(initial=0.0))

    def top(self, row: int, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` groups with the largest |phi| of one row, with their phi."""
        order = np.argsort(-np.abs(self.values[row]))[:k]
        return [(self.groups[j], float(self.values[row, j])) for j in order]


def field_groups(model: XDeepFMRanker, fields: Fields = None) -> dict[str, list[str]]:
    """Groups of the model's fields: ``fields`` as a dict ``{group: [field names or fnmatch patterns]}``
    (e.g. ``{"video semantics": ["semantics_*"]}``), a list of field names (each its own group), or None;
    every field not named becomes a group of its own, in the model's field order."""
    names = list(model.feature_index)
    spec = {name: [name] for name in fields} if isinstance(fields, list) else dict(fields or {})
    groups: dict[str, list[str]] = {}
    taken: set[str] = set()
    for group, patterns in spec.items():
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        members = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if not members:
            raise ValueError(f"group {group!r}: {patterns} match no field of the model (fields: {names})")
        clash = sorted(taken & set(members))
        if clash:
            raise ValueError(f"group {group!r}: fields {clash} are already in another group")
        groups[group] = members
        taken.update(members)
    for name in names:
        if name not in taken:
            groups[name] = [name]
    return groups


def baseline_row(model: XDeepFMRanker, X: torch.Tensor, baseline: str | np.ndarray | torch.Tensor = "oov") -> torch.Tensor:
    """The (width,) baseline row (see the module docstring)."""
    width = X.shape[1]
    if not isinstance(baseline, str):
        row = torch.as_tensor(baseline, dtype=X.dtype).reshape(-1)
        if row.numel() != width:
            raise ValueError(f"baseline has {row.numel()} values; the model's input rows have {width}")
        return row.to(X.device)
    if baseline not in ("oov", "mean"):
        raise ValueError(f"baseline={baseline!r}: expected 'oov', 'mean' or a row of {width} values")
    row = torch.zeros(width, dtype=X.dtype, device=X.device)  # ids: the OOV bucket 0; numeric: the training mean
    if baseline == "mean":
        ids = {c.name for c in (*model.sparse, *model.varlen, *model.sequences)}
        for name, (start, end) in model.feature_index.items():
            if name not in ids:
                row[start:end] = X[:, start:end].mean(0)
    return row


def _columns(model: XDeepFMRanker, groups: dict[str, list[str]]) -> list[torch.Tensor]:
    """Per group, the input columns of its fields."""
    return [torch.cat([torch.arange(*model.feature_index[name]) for name in members]) for members in groups.values()]


def _coalition_rows(x: torch.Tensor, base: torch.Tensor, cols: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """(n * C, width): for every row of x (n, width) and coalition mask (C, G), x on the coalition's columns, base elsewhere."""
    n, width = x.shape
    take = torch.zeros(masks.shape[0], width, dtype=torch.bool, device=x.device)
    for g, c in enumerate(cols):
        take[:, c] = masks[:, g, None]
    rows = torch.where(take[None], x[:, None, :], base[None, None, :])  # (n, C, width)
    return rows.reshape(n * masks.shape[0], width)


def _nonlinear(model: nn.Module, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """logit - bias - linear part (the CIN + DNN part) of each row, in batches."""
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        value = model(chunk)
        if isinstance(model, XDeepFMRanker):
            value = value - model.linear(chunk).squeeze(1) - model.bias
        out.append(value.double())
    return torch.cat(out) if out else rows.new_zeros(0, dtype=torch.float64)


def _exact_shapley(model, x, base, cols, batch_size) -> torch.Tensor:
    """(n, G) exact Shapley values of v(S) = nonlinear(x_S, base_rest), from all 2^G coalitions."""
    G = len(cols)
    codes = torch.arange(2 ** G, device=x.device)
    masks = ((codes[:, None] >> torch.arange(G, device=x.device)[None]) & 1).bool()  # (C, G)
    sizes = masks.sum(1)
    weight = torch.tensor([math.factorial(s) * math.factorial(G - s - 1) / math.factorial(G) if s < G else 0.0
                           for s in range(G + 1)], dtype=torch.float64, device=x.device)
    phi = torch.zeros(len(x), G, dtype=torch.float64, device=x.device)
    per_chunk = max(1, batch_size // 2 ** G)
    for start in range(0, len(x), per_chunk):
        xs = x[start:start + per_chunk]
        v = _nonlinear(model, _coalition_rows(xs, base, cols, masks), batch_size).view(len(xs), -1)  # (n, C)
        for g in range(G):
            without = codes[~masks[:, g]]  # coalitions S without g
            phi[start:start + len(xs), g] = ((v[:, without | (1 << g)] - v[:, without]) * weight[sizes[without]]).sum(1)
    return phi


def _sampled_shapley(model, x, base, cols, batch_size, permutations: int, seed: int) -> torch.Tensor:
    """(n, G) Shapley values estimated from ``permutations`` orders (antithetic pairs); completeness is exact."""
    G = len(cols)
    generator = torch.Generator().manual_seed(seed)
    half = [torch.randperm(G, generator=generator) for _ in range(max(1, permutations // 2))]
    orders = [*half, *(p.flip(0) for p in half)][:max(1, permutations)]
    phi = torch.zeros(len(x), G, dtype=torch.float64, device=x.device)
    for order in orders:
        masks = torch.zeros(G + 1, G, dtype=torch.bool, device=x.device)  # prefixes of the order: none .. all
        for step, g in enumerate(order.tolist()):
            masks[step + 1:, g] = True
        per_chunk = max(1, batch_size // (G + 1))
        for start in range(0, len(x), per_chunk):
            xs = x[start:start + per_chunk]
            v = _nonlinear(model, _coalition_rows(xs, base, cols, masks), batch_size).view(len(xs), G + 1)
            phi[start:start + len(xs), order.to(x.device)] += v[:, 1:] - v[:, :-1]
    return phi / len(orders)


@torch.inference_mode()
def attribute(model: nn.Module, X: torch.Tensor | np.ndarray, fields: Fields = None,
              baseline: str | np.ndarray | torch.Tensor = "oov", max_exact: int = 12, permutations: int = 64,
              seed: int = 0, batch_size: int = 4096) -> Attribution:
    """Additive attributions of the logit of every row of ``X`` (n, width) to the groups of ``fields``.

    ``model``: an ``XDeepFMRanker`` (its ``feature_index`` gives each field's columns), put in eval mode.
    See the module docstring for the baseline, the exact linear part and the Shapley part.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        X = torch.as_tensor(X, dtype=torch.float32).to(device)
        groups = field_groups(model, fields)
        cols = _columns(model, groups)
        base = baseline_row(model, X, baseline)
        logit = torch.cat([model(X[i:i + batch_size]) for i in range(0, len(X), batch_size)]).double()
        baseline_logit = float(model(base[None]).double())
        # exact linear part: linear(x_g, b_rest) - linear(b), one coalition per group
        single = torch.eye(len(cols), dtype=torch.bool, device=device)
        linear = torch.zeros(len(X), len(cols), dtype=torch.float64, device=device)
        if isinstance(model, XDeepFMRanker):
            lin_base = model.linear(base[None]).double().squeeze()
            for start in range(0, len(X), max(1, batch_size // len(cols))):
                xs = X[start:start + max(1, batch_size // len(cols))]
                lin = model.linear(_coalition_rows(xs, base, cols, single)).double().view(len(xs), len(cols))
                linear[start:start + len(xs)] = lin - lin_base
        if len(cols) <= max_exact:
            interaction, method = _exact_shapley(model, X, base, cols, batch_size), "exact"
        else:
            interaction = _sampled_shapley(model, X, base, cols, batch_size, permutations, seed)
            method = f"sampled ({permutations} permutations)"
    finally:
        model.train(was_training)
    values = linear + interaction
    return Attribution(groups=list(groups), members=groups, values=values.cpu().numpy(), linear=linear.cpu().numpy(),
                       interaction=interaction.cpu().numpy(), logit=logit.cpu().numpy(), baseline_logit=baseline_logit,
                       method=method)


# ------------------------------------------------------------------------------------------ command line


def _parse_groups(items: list[str]) -> dict[str, list[str]]:
    """``NAME=PATTERN[,PATTERN...]`` items -> groups."""
    groups = {}
    for item in items:
        name, sep, patterns = item.partition("=")
        if not sep or not name or not patterns:
            raise ValueError(f"--group {item!r}: expected NAME=FIELD[,FIELD...] (fnmatch patterns allowed)")
        groups[name] = patterns.split(",")
    return groups


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, type=Path, help="a ranking run directory or checkpoint file")
    parser.add_argument("--split", default="test", help="split of the run's data to explain (default test)")
    parser.add_argument("--rows", type=int, default=100, help="first rows of the split to explain (default 100)")
    parser.add_argument("--group", action="append", default=[], metavar="NAME=FIELD[,FIELD]",
                        help="a group of fields attributed together (fnmatch patterns), repeatable, "
                             "e.g. --group 'video semantics=video_*'")
    parser.add_argument("--baseline", default="oov", choices=["oov", "mean"], help="baseline row (default oov)")
    parser.add_argument("--max-exact", type=int, default=12, help="exact Shapley up to this many groups (default 12)")
    parser.add_argument("--permutations", type=int, default=64, help="permutations when sampled (default 64)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")


def run(args: argparse.Namespace) -> int:
    groups = _parse_groups(args.group)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = checkpoint_file(args.checkpoint)
    ckpt = load_ranking_checkpoint(path)
    cfg = build(RankingExperiment, ckpt.config, f"{path}:config")
    if cfg.model.implementation != "ours":
        raise ValueError(f"{path}: a {cfg.model.implementation} model; attributions need model.implementation: ours")
    pipeline = ckpt.features
    model = XDeepFMRanker([pipeline.fitted[f.name] for f in pipeline.spec.fields], cfg.model, seed=cfg.train.seed)
    model.load_state_dict(ckpt.model_state)
    frames = load_frames(cfg)
    if args.split not in frames:
        raise ValueError(f"--split {args.split!r}: expected one of {sorted(frames)}")
    frame = frames[args.split].iloc[: args.rows]
    X = torch.from_numpy(stack_inputs(pipeline.transform(frame, args.split), model.columns))
    started = time.perf_counter()
    result = attribute(model, X, groups, baseline=args.baseline, max_exact=args.max_exact, permutations=args.permutations)
    seconds = time.perf_counter() - started
    log.info("%d rows, %d groups (%s Shapley), baseline %s: %.2f s (%.1f ms/row) on %d thread(s); max completeness "
             "error %.2e", len(X), len(result.groups), result.method, args.baseline, seconds, 1000 * seconds / max(len(X), 1),
             torch.get_num_threads(), result.completeness_error())
    mean_abs = np.abs(result.values).mean(0)
    for j in np.argsort(-mean_abs):
        log.info("  %-24s mean |phi| %.4f  (linear %.4f, interaction %.4f)", result.groups[j], mean_abs[j],
                 np.abs(result.linear[:, j]).mean(), np.abs(result.interaction[:, j]).mean())
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main("python -m xdeepfm.explain", "Per-field attributions of the ranking logit (exact linear part, "
                        "Shapley over fields for CIN + DNN).", add_arguments, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
