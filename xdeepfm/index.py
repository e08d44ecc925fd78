"""The recall index: item vectors in FAISS (Johnson, Douze & Jegou 2019, [FAISS] in docs/references.md).

``VectorIndex`` maps item ids to vectors and answers maximum-inner-product queries:

- ``kind: flat`` (the default): ``IndexFlatIP``, exact. ``auto`` switches to ``approximate_kind``
  past ``auto_threshold`` items (the size measured in ``bench/recall_index.py``, docs/performance.md);
  ``ivf`` (``IndexIVFFlat``, ``nlist`` inverted lists trained by k-means on the first build,
  ``nprobe`` probed per query) and ``hnsw`` (``IndexHNSWFlat``, inner-product metric, ``hnsw_m``
  links, ``ef_search``) are approximate.
- ``add(ids, vectors)`` inserts new items and replaces the vectors of ids already present: FAISS
  indexes cannot all remove, so a replaced row is marked dead (a tombstone) and skipped by
  ``search``, which over-fetches by the number of dead rows; ``rebuild()`` drops them.
- ``search(queries, k, exclude)`` returns (ids, scores) per query, best first, without the ids in
  ``exclude[q]``; fewer than k when the index holds fewer live items.
- ``save(directory)`` writes ``recall_index.faiss`` (``faiss.write_index``), ``recall_index.npz``
  (ids, vectors, live mask; read with ``allow_pickle=False``) and ``recall_index.json`` (config,
  dim, counts); ``VectorIndex.load`` reads them back. No pickle.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from mmcore.config import build, check_range
from mmcore.files import write_bytes

log = logging.getLogger(__name__)

INDEX_FILE, ARRAYS_FILE, META_FILE = "recall_index.faiss", "recall_index.npz", "recall_index.json"
FORMAT_VERSION = 1


@dataclass
class IndexConfig:
    """Which FAISS index holds the item vectors (``recall.index`` in a recall YAML)."""

    kind: Literal["flat", "ivf", "hnsw", "auto"] = "flat"
    # auto: approximate past this many items. On random 64-d vectors no IVF/HNSW setting measured
    # came within 1 point of the exact recall@200 at 300k or 1M items (at 100k one did, slower than
    # flat), and flat takes ~25 ms per query at 1M on one thread (bench/recall_index.py,
    # docs/performance.md): flat up to 1M.
    auto_threshold: int = 1_000_000
    approximate_kind: Literal["ivf", "hnsw"] = "hnsw"
    nlist: int = 1024  # ivf: inverted lists (capped at items / 39, FAISS's minimum points per centroid)
    nprobe: int = 32  # ivf: lists visited per query
    hnsw_m: int = 32  # hnsw: links per node
    ef_construction: int = 80
    ef_search: int = 256  # hnsw: candidate list per query (>= k)
    threads: int | None = None  # OpenMP threads for FAISS; None leaves FAISS's default

    def __post_init__(self) -> None:
        for key in ("auto_threshold", "nlist", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            check_range(key, getattr(self, key), low=1)
        check_range("threads", self.threads, low=1)

    def resolved_kind(self, n_items: int) -> str:
        if self.kind != "auto":
            return self.kind
        return self.approximate_kind if n_items > self.auto_threshold else "flat"


def _faiss():
    import faiss

    return faiss


class VectorIndex:
    """Item id -> vector, searchable by inner product (see the module docstring)."""

    def __init__(self, dim: int, config: IndexConfig | None = None) -> None:
        check_range("dim", dim, low=1)
        self.dim = dim
        self.config = config or IndexConfig()
        self.ids = np.zeros(0, dtype=np.int64)  # row -> item id (int64 ids, or str ids kept as given)
        self.vectors = np.zeros((0, dim), np.float32)
        self.live = np.zeros(0, bool)
        self._row_of: dict = {}  # item id -> its live row
        self._index = None
        self.kind = "flat"
        if self.config.threads is not None:
            _faiss().omp_set_num_threads(self.config.threads)

    def __len__(self) -> int:
        return len(self._row_of)

    @property
    def dead(self) -> int:
        return int(len(self.live) - self.live.sum())

    # -- building ------------------------------------------------------------------------------
    def _check_vectors(self, ids: Sequence, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(ids)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must be (n, {self.dim}); got {vectors.shape}")
        if len(ids) != len(vectors):
            raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids must be unique within one call")
        if not np.isfinite(vectors).all():
            raise ValueError(f"vector of id {ids[int(np.flatnonzero(~np.isfinite(vectors).all(1))[0])]!r} is not finite")
        return ids, vectors

    def _new_index(self, n_items: int, train_vectors: np.ndarray):
        faiss = _faiss()
        self.kind = self.config.resolved_kind(n_items)
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.config.ef_construction
            index.hnsw.efSearch = self.config.ef_search
            return index
        nlist = max(1, min(self.config.nlist, len(train_vectors) // 39))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(train_vectors)
        index.nprobe = min(self.config.nprobe, nlist)
        self._quantizer = quantizer  # the Python object must outlive the index that points to it
        return index

    def build(self, ids: Sequence, vectors: np.ndarray) -> "VectorIndex":
        """Replace the whole content with ``ids`` / ``vectors``."""
        ids, vectors = self._check_vectors(ids, vectors)
        self.ids, self.vectors, self.live = ids.copy(), vectors.copy(), np.ones(len(ids), bool)
        self._row_of = {item: row for row, item in enumerate(ids.tolist())}
        self._index = self._new_index(len(ids), vectors)
        self._index.add(vectors)
        log.info("recall index: %d items, dim %d, %s", len(ids), self.dim, self.kind)
        return self

    def add(self, ids: Sequence, vectors: np.ndarray) -> None:
        """Insert new items; an id already present gets the new vector (its old row becomes dead)."""
        ids, vectors = self._check_vectors(ids, vectors)
        if self._index is None:
            self.build(ids, vectors)
            return
        for item in ids.tolist():
            row = self._row_of.get(item)
            if row is not None:
                self.live[row] = False
        start = len(self.ids)
        self.ids = np.concatenate([self.ids, ids]) if len(self.ids) else ids.copy()
        self.vectors = np.concatenate([self.vectors, vectors])
        self.live = np.concatenate([self.live, np.ones(len(ids), bool)])
        for offset, item in enumerate(ids.tolist()):
            self._row_of[item] = start + offset
        self._index.add(vectors)

    def rebuild(self) -> None:
        """Rebuild from the live rows (drops tombstones, re-trains IVF, re-picks ``auto``)."""
        self.build(self.ids[self.live], self.vectors[self.live])

    def vector(self, item) -> np.ndarray:
        return self.vectors[self._row_of[item]]

    # -- search --------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top-``k`` live items by inner product for each query row, without ``exclude[q]``."""
        check_range("k", k, low=1)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}); got {queries.shape}")
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"{len(queries)} queries but {len(exclude)} exclusion lists")
        if self._index is None or not len(self):
            return [(self.ids[:0], np.zeros(0, np.float32)) for _ in range(len(queries))]
        most_excluded = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        fetch = min(self._index.ntotal, k + most_excluded + self.dead)
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = max(self.config.ef_search, fetch)
        scores, rows = self._index.search(queries, fetch)
        out = []
        for q in range(len(queries)):
            r, s = rows[q], scores[q]
            keep = r >= 0
            r, s = r[keep], s[keep]
            alive = self.live[r]
            r, s = r[alive], s[alive]
            items = self.ids[r]
            if exclude is not None and len(exclude[q]):
                mask = ~np.isin(items, np.asarray(list(exclude[q]), dtype=items.dtype))
                items, s = items[mask], s[mask]
            out.append((items[:k], s[:k]))
        return out

    # -- files ---------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        faiss = _faiss()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._index is None:
            raise RuntimeError("VectorIndex.save: the index is empty (call build first)")
        write_bytes(directory / INDEX_FILE, faiss.serialize_index(self._index).tobytes())
        import io

        buffer = io.BytesIO()
        ids = self.ids.astype(str) if self.ids.dtype == object else self.ids  # string ids as a unicode array: no pickle
        np.savez(buffer, ids=ids, vectors=self.vectors, live=self.live)
        write_bytes(directory / ARRAYS_FILE, buffer.getvalue())
        meta = {"format_version": FORMAT_VERSION, "dim": self.dim, "kind": self.kind, "items": len(self),
                "rows": len(self.ids), "config": asdict(self.config)}
        write_bytes(directory / META_FILE, json.dumps(meta, indent=1).encode())

    @classmethod
    def load(cls, directory: str | Path) -> "VectorIndex":
        faiss = _faiss()
        directory = Path(directory)
        path = directory / META_FILE
        try:
            meta = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: recall index not found") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
        index = cls(int(meta["dim"]), build(IndexConfig, meta["config"], f"{path}:config"))
        with np.load(directory / ARRAYS_FILE, allow_pickle=False) as arrays:
            index.ids, index.vectors, index.live = arrays["ids"], arrays["vectors"], arrays["live"]
        index._row_of = {item: row for row, item in enumerate(index.ids.tolist()) if index.live[row]}
        raw = np.frombuffer((directory / INDEX_FILE).read_bytes(), dtype=np.uint8)
        index._index = faiss.deserialize_index(raw)
        index.kind = meta["kind"]
        if index._index.ntotal != len(index.ids) or index._index.d != index.dim:
            raise ValueError(f"{directory / INDEX_FILE}: holds {index._index.ntotal} vectors of dim {index._index.d}, "
                             f"expected {len(index.ids)} of dim {index.dim}")
        return index
