"""Datasets for the ranking model (``xdeepfm.data.movielens``: MovieLens-100K)."""
