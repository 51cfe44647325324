"""Python state as plain data that ``torch.load(weights_only=True)`` reads
without running any code: what an experience checkpoint stores of the
evaluator's metrics, results and loggers.

:func:`to_plain` turns numbers, strings, tensors, containers, PIL images and
the objects of Avalanche and this package into nested lists, dicts, strings,
numbers and tensors, each non-plain value tagged with what it was.
:func:`from_plain` turns them back; it rebuilds only objects whose classes
live in Avalanche or this package, by setting their attributes (no
constructor, no ``__reduce__``, no import of any other module).
"""

import importlib
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["PlainStateError", "to_plain", "from_plain", "TRUSTED_MODULES"]

TRUSTED_MODULES = ("avalanche.", "piggyback_avalanche.")
"""Modules whose classes may be rebuilt from plain data."""

_TAG = "__plain__"


class PlainStateError(ValueError):
    """A value cannot be stored as plain data, or plain data does not
    describe a value this package rebuilds."""


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _trusted_class(name: Any) -> type:
    if not isinstance(name, str) or ":" not in name:
        raise PlainStateError(f"{name!r} does not name a class")
    module, qualname = name.split(":", 1)
    if not module.startswith(TRUSTED_MODULES):
        raise PlainStateError(f"{name} is not a class of Avalanche or piggyback_avalanche; it is not rebuilt")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, type):
        raise PlainStateError(f"{name} is not a class")
    return found


def to_plain(value: Any) -> Any:
    """``value`` as plain data.

    :raises PlainStateError: naming the first value that is neither plain nor
        one of the types above.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise PlainStateError("cannot store a numpy array of Python objects as plain data")
        # Its bytes, dtype and shape: torch before 2.6 cannot save unsigned tensors wider than a byte.
        data = torch.frombuffer(bytearray(np.ascontiguousarray(value).tobytes()), dtype=torch.uint8)
        return {_TAG: "ndarray", "dtype": value.dtype.str, "shape": list(value.shape), "data": data}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Image.Image):
        data = torch.frombuffer(bytearray(value.tobytes()), dtype=torch.uint8)
        return {_TAG: "image", "mode": value.mode, "size": list(value.size), "data": data}
    if isinstance(value, defaultdict):
        factory = value.default_factory
        if not isinstance(factory, type):
            raise PlainStateError(f"a defaultdict whose default is {factory!r}, not a class")
        items = [[to_plain(k), to_plain(v)] for k, v in value.items()]
        return {_TAG: "defaultdict", "factory": _class_name(factory), "items": items}
    if isinstance(value, dict):
        return {_TAG: "dict", "items": [[to_plain(k), to_plain(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple, set)):
        return {_TAG: type(value).__name__, "items": [to_plain(v) for v in value]}
    if type(value).__module__.startswith(TRUSTED_MODULES) and hasattr(value, "__dict__"):
        return {_TAG: "object", "class": _class_name(type(value)), "state": to_plain(vars(value))}
    raise PlainStateError(f"cannot store a {type(value).__module__}.{type(value).__qualname__} as plain data")


def from_plain(data: Any) -> Any:
    """The value that :func:`to_plain` made ``data`` from.

    :raises PlainStateError: for data that :func:`to_plain` does not make.
    """
    if data is None or isinstance(data, (bool, int, float, str, torch.Tensor)):
        return data
    if not isinstance(data, dict) or _TAG not in data:
        raise PlainStateError(f"untagged {type(data).__name__} in plain data")
    kind = data[_TAG]
    if kind in ("dict", "defaultdict"):
        pairs = [(from_plain(k), from_plain(v)) for k, v in _pairs(data["items"])]
        if kind == "dict":
            return dict(pairs)
        return defaultdict(_trusted_class(data["factory"]), pairs)
    if kind in ("list", "tuple", "set"):
        items = [from_plain(v) for v in _list(data["items"])]
        return {"list": list, "tuple": tuple, "set": set}[kind](items)
    if kind == "ndarray":
        if "dtype" not in data:  # written before arrays were stored as bytes
            return _tensor(data["data"]).numpy()
        try:
            dtype = np.dtype(str(data["dtype"]))
            shape = tuple(int(n) for n in _list(data["shape"]))
            if dtype.hasobject:
                raise PlainStateError("an array of Python objects in plain data")
            return np.frombuffer(_tensor(data["data"]).numpy().tobytes(), dtype=dtype).reshape(shape).copy()
        except (TypeError, ValueError) as error:
            raise PlainStateError(f"a malformed array in plain data ({error})") from None
    if kind == "image":
        width, height = _list(data["size"])
        return Image.frombytes(str(data["mode"]), (int(width), int(height)), _tensor(data["data"]).numpy().tobytes())
    if kind == "object":
        cls = _trusted_class(data["class"])
        state = from_plain(data["state"])
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise PlainStateError(f"the state of a {data['class']} is not a dict of attributes")
        obj: Any = object.__new__(cls)
        obj.__dict__.update(state)
        return obj
    raise PlainStateError(f"unknown tag {kind!r} in plain data")


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise PlainStateError(f"expected a list in plain data, found {type(value).__name__}")
    return value


def _pairs(value: Any) -> list[Any]:
    pairs = _list(value)
    if not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise PlainStateError("expected key-value pairs in plain data")
    return pairs


def _tensor(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise PlainStateError(f"expected a tensor in plain data, found {type(value).__name__}")
    return value
