"""Text of each clip -> ``raw_text`` and ``text_bert`` (N, 3, L): token ids, attention mask, segment ids.

The title / description is segment A; a transcript, when given, is segment B of the same BERT
input (``[CLS] text [SEP] transcript [SEP]``, segment ids 0 then 1), truncated longest-first to
``max_len`` tokens. ``raw_text`` is the text, a space and the transcript. Optionally the encoder's
last hidden states go into ``text`` (N, L, Dt), zero at padding: what models trained with
``model.text.source: features`` (the default config) read; they come from
``mmfusion.data.synthetic.encode_text_features``, the encoder SynthMOSI's ``text`` key uses.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mmcore.hf import load_tokenizer

log = logging.getLogger(__name__)


def tokenize(texts: list[str], transcripts: list[str], model_path: str | Path, max_len: int = 50) -> np.ndarray:
    """(N, 3, max_len) int64 ``text_bert``; a clip without transcript ("") is a single segment."""
    tokenizer = load_tokenizer(model_path)
    rows, truncated = [], 0
    for text, transcript in zip(texts, transcripts):
        pair = (text, transcript) if transcript else (text,)
        full = len(tokenizer(*pair)["input_ids"])
        truncated += full > max_len
        enc = tokenizer(*pair, padding="max_length", truncation="longest_first", max_length=max_len,
                        return_token_type_ids=True)
        rows.append([enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]])
    if truncated:
        log.warning("%d of %d clips have more than %d tokens: truncated (longest segment first)",
                    truncated, len(texts), max_len)
    return np.asarray(rows, dtype=np.int64).reshape(len(texts), 3, max_len)
