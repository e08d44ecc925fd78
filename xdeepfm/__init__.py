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
"""
