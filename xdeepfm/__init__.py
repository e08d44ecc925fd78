"""BERT-enhanced xDeepFM ranking (seed paper section II.C; Lian et al. KDD 2018).

Modules, one concept each:

- ``xdeepfm.features``: declarative feature spec (YAML) -> fitted, JSON-serialisable pipeline
  (label encoding with an OOV bucket, numeric normalisation, cached BERT sentence vectors).
- ``xdeepfm.model``: linear + CIN + DNN on deepctr-torch blocks, text/vector fields projected
  into field embeddings so the CIN crosses them with the id fields.
- ``xdeepfm.metrics``: AUC, logloss, GAUC, NDCG@K, HR@K, Precision@K.
- ``xdeepfm.data.movielens``: MovieLens-100K loading and the random / cold-item splits.
- ``xdeepfm.train`` / ``xdeepfm.evaluate``: ``run(...)`` entry points used by the top-level CLIs.
- ``xdeepfm.baseline``: stock ``deepctr_torch.models.xDeepFM`` on the same non-text features.
- ``xdeepfm.compare``: the side-by-side study behind ``docs/results_ranking.md``.
- ``xdeepfm.data.ecommerce``: the synthetic product-video catalogue with a known click model;
  ``xdeepfm.data.shards``: Parquet shards streamed as an ``IterableDataset``.
- ``xdeepfm.export``: a checkpoint as a self-contained, checksummed artifact (JSON + safetensors).
- ``xdeepfm.serving``: the scoring engine (raw records in, scores or a ranking out);
  ``xdeepfm.app`` / ``xdeepfm.server``: the HTTP service and a client that runs it as a process;
  ``xdeepfm.cli``: ``python -m xdeepfm export|serve``.
"""
