"""A restricted unpickler for scenario pickles that come from outside (ScenarioNet files).

``pickle.load`` runs whatever callable a pickle names (``os.system``, ``subprocess.Popen``,
``builtins.eval`` ...): a pickle is a program. Scenario files converted by someone else must
therefore be loaded with :func:`safe_load`, whose unpickler (a
``pickle.Unpickler.find_class`` override, the pattern of the Python docs' "Restricting
Globals") resolves only an allow-list of globals:

* builtins containers and scalars: ``dict``, ``list``, ``tuple``, ``set``, ``frozenset``,
  ``bytearray``, ``int``, ``float``, ``complex``, ``str``, ``bytes``, ``bool``, ``slice``,
  ``range`` and ``NoneType`` (as pickled by protocols 0-5);
* ``collections.defaultdict`` and ``collections.OrderedDict`` (and ``_collections``, where
  the C implementation lives);
* numpy array reconstruction: ``numpy.core.multiarray._reconstruct`` /
  ``numpy._core.multiarray._reconstruct`` (``ndarray.__reduce__``), ``numpy.ndarray``,
  ``numpy.dtype``, ``numpy.core.multiarray.scalar`` / ``numpy._core.multiarray.scalar``
  (numpy scalars such as ``np.float64(1.0)``) and ``numpy._core.numeric._frombuffer`` /
  ``numpy.core.numeric._frombuffer`` (protocol-5 out-of-band arrays);
* ``_codecs.encode``: protocol 2 pickles ``bytes`` (and so numpy array buffers) as
  ``_codecs.encode(text, "latin1")`` (a data transform; it runs no code).

The real ScenarioNet Waymo fixture (``sd_waymo_v1.2_*.pkl``, written under numpy 1.x) needs
exactly ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``,
``collections.defaultdict`` and ``builtins.int``; the others are what the same data pickled
under numpy 2 or by another converter version uses. ``numpy.core.*`` names are resolved to
``numpy._core.*`` under numpy 2 (same objects, no deprecation warning).

Note that ``numpy.dtype`` / ``_reconstruct`` only build arrays of plain dtypes here: an
object-dtype array (``dtype('O')``) holds pickled Python objects whose globals go through
the same ``find_class`` and are refused likewise.

Source: Python docs, ``pickle`` — "Restricting Globals"; ScenarioNet's ``read_scenario_data``
(``scenarionet/common_utils.py``), which uses plain ``pickle.load``.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from typing import Any

__all__ = ["UnsafePickleError", "CorruptPickleError", "SafeUnpickler", "safe_load", "safe_loads",
           "ALLOWED_GLOBALS"]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; ``.name`` is ``module.name``."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name
        super().__init__(f"refused to load global {module}.{name!s}: only builtins containers/"
                         "scalars, collections.defaultdict/OrderedDict and numpy arrays are allowed "
                         "in scenario pickles (mosaic_ray.data.safe_pickle)")

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.name}"


class CorruptPickleError(pickle.UnpicklingError):
    """The data is not a complete, well-formed pickle (truncated, empty or garbled)."""


_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "bytearray", "int", "float", "complex",
             "str", "bytes", "bool", "slice", "range", "NoneType")
#: (module, name) pairs that :class:`SafeUnpickler` resolves.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("builtins", n) for n in _BUILTINS} | {("__builtin__", n) for n in _BUILTINS}
    | {("collections", "defaultdict"), ("collections", "OrderedDict"),
       ("_collections", "defaultdict"), ("_collections", "OrderedDict")}
    | {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
       for n in ("_reconstruct", "scalar")}
    | {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
    | {("_codecs", "encode")}
    | {("numpy", "ndarray"), ("numpy", "dtype")}
)


def _resolve(module: str, name: str) -> Any:
    import builtins
    import collections

    if module in ("builtins", "__builtin__"):
        return type(None) if name == "NoneType" else getattr(builtins, name)
    if module in ("collections", "_collections"):
        return getattr(collections, name)
    if module == "_codecs":
        import _codecs

        return getattr(_codecs, name)
    import numpy as np

    if module == "numpy":
        return getattr(np, name)
    # numpy.core.X / numpy._core.X: import the private module that exists in this numpy
    import importlib

    sub = module.split(".", 2)[2]
    for base in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{base}.{sub}"), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {module}.{name} in this version")


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`ALLOWED_GLOBALS`.

    Raises (from ``load``):
        UnsafePickleError: a global outside the allow-list (nothing it names is imported or
            called).
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(module, name)
        return _resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("<persistent_id>", repr(pid)[:80])


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler`.

    Raises:
        UnsafePickleError: a refused global (the message names ``module.name``).
        CorruptPickleError: truncated, empty or malformed data, or trailing garbage.
    """
    buf = io.BytesIO(data)
    try:
        obj = SafeUnpickler(buf).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, struct.error, MemoryError, RecursionError, UnicodeDecodeError) as e:
        raise CorruptPickleError(f"corrupt or truncated pickle ({len(data)} bytes): "
                                 f"{type(e).__name__}: {str(e)[:200]}") from e
    if buf.tell() != len(data):
        raise CorruptPickleError(f"{len(data) - buf.tell()} bytes of trailing data after the pickle's STOP")
    return obj


def safe_load(src: str | os.PathLike | bytes | bytearray | memoryview) -> Any:
    """Load a pickle from a path or from bytes with :class:`SafeUnpickler`.

    Args:
        src: a file path, or the pickle's bytes.

    Returns:
        The unpickled object (for a ScenarioNet file: a dict, see :mod:`mosaic_ray.data.scenarionet`).

    Raises:
        UnsafePickleError: the pickle names a global outside :data:`ALLOWED_GLOBALS`.
        CorruptPickleError: the data is truncated or malformed.
        OSError: the file cannot be read.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        return safe_loads(bytes(src))
    with open(src, "rb") as f:
        data = f.read()
    return safe_loads(data)
