"""BERT-enhanced xDeepFM ranking (the source paper's section II.C; xDeepFM, Lian et al. KDD 2018;
both in docs/references.md). It imports ``mmcore`` and itself only, never ``mmfusion`` or ``mmapp``.

Modules, one concept each:

- ``xdeepfm.features``: declarative feature spec (YAML) -> fitted, JSON-serialisable pipeline
  (label encoding with an OOV bucket, numeric normalisation, cached BERT sentence vectors).
- ``xdeepfm.model``: linear + CIN + DNN on deepctr-torch blocks, text/vector fields projected
  into field embeddings so the CIN crosses them with the id fields.
- ``xdeepfm.metrics``: AUC, logloss, GAUC, NDCG@K, HR@K, Precision@K.
- ``xdeepfm.data``: ``load_splits(data_config)`` over ``movielens`` (MovieLens-100K and the random /
  cold-item splits), ``ecommerce`` (the impressions of the synthetic product-video catalogue, which
  ``mmapp.catalogue`` generates) and ``parquet`` (Parquet shards streamed as an ``IterableDataset``;
  ``python -m xdeepfm.data.shards`` writes them).
- ``xdeepfm.experiment``: the schema of a ranking YAML, ``load_experiment(path, overrides)``.
- ``xdeepfm.train``: ``train(cfg, out_dir, *, resume, stop_after)``; ``xdeepfm.losses``: ``ranking_loss``;
  ``xdeepfm.checkpoint``: the ranking checkpoint (``mmcore.checkpoint`` format);
  ``xdeepfm.evaluate``: ``evaluate_checkpoint(checkpoint, data_config_path, out_dir)``.
- ``xdeepfm.baseline``: stock ``deepctr_torch.models.xDeepFM`` on the same non-text features.
- ``xdeepfm.compare``: the side-by-side study behind ``docs/results_ranking.md``.
- ``xdeepfm.export``: a checkpoint as a self-contained, checksummed artifact (JSON + safetensors).
- ``xdeepfm.serving``: the scoring engine (raw records in, scores or a ranking out);
  ``xdeepfm.app`` / ``xdeepfm.server``: the HTTP service and a client that runs it as a process;
  ``xdeepfm.cli``: ``python -m xdeepfm export|serve``.
"""
