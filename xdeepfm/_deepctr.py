"""The one place that imports deepctr-torch, without its PyPI version check.

``import deepctr_torch`` runs ``deepctr_torch.utils.check_version`` from the package
``__init__``: it starts a thread that calls ``requests.get("https://pypi.python.org/...")`` and,
offline, prints "Please check the latest version manually ...". No code path of this project may
touch the network, so before the first import we put a meta-path finder in front that loads
``deepctr_torch.utils`` normally and then replaces its ``check_version`` with a no-op; the
package ``__init__`` (``from .utils import check_version; check_version(__version__)``) then
calls the no-op. Everything else in deepctr-torch is untouched.

Import deepctr-torch names from here, never from ``deepctr_torch`` directly::

    from xdeepfm._deepctr import CIN, DNN, SparseFeat, DenseFeat, VarLenSparseFeat
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

_UTILS = "deepctr_torch.utils"


def _no_version_check(version: str) -> None:
    """Replacement for ``deepctr_torch.utils.check_version``: no thread, no network, no output."""
    return None


class _PatchedUtilsLoader(importlib.abc.Loader):
    def __init__(self, original: importlib.abc.Loader) -> None:
        self._original = original

    def create_module(self, spec):  # noqa: D401 - importlib protocol
        return self._original.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._original.exec_module(module)
        module.check_version = _no_version_check


class _NoVersionCheckFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _UTILS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchedUtilsLoader(spec.loader)
        return spec


def _import_deepctr() -> types.ModuleType:
    if "deepctr_torch" in sys.modules:  # imported elsewhere first: make later calls harmless
        utils = sys.modules.get(_UTILS)
        if utils is not None:
            utils.check_version = _no_version_check
        return sys.modules["deepctr_torch"]
    finder = _NoVersionCheckFinder()
    sys.meta_path.insert(0, finder)
    try:
        import deepctr_torch
    finally:
        sys.meta_path.remove(finder)
    return deepctr_torch


deepctr_torch = _import_deepctr()

from deepctr_torch.inputs import (  # noqa: E402
    DenseFeat,
    SparseFeat,
    VarLenSparseFeat,
    build_input_features,
    create_embedding_matrix,
    get_varlen_pooling_list,
    varlen_embedding_lookup,
)
from deepctr_torch.layers import CIN, DNN, AttentionSequencePoolingLayer  # noqa: E402
from deepctr_torch.models.basemodel import Linear  # noqa: E402
from deepctr_torch.models.xdeepfm import xDeepFM  # noqa: E402

__all__ = [
    "AttentionSequencePoolingLayer",
    "CIN",
    "DNN",
    "DenseFeat",
    "Linear",
    "SparseFeat",
    "VarLenSparseFeat",
    "build_input_features",
    "create_embedding_matrix",
    "deepctr_torch",
    "get_varlen_pooling_list",
    "varlen_embedding_lookup",
    "xDeepFM",
]
