"""Shared machinery for simgen's frozen tensor dataclasses.

Every data type in ``simgen.types`` is a frozen dataclass whose tensor fields
share a batch shape ``[..]`` plus per-type trailing axes (agents ``A``, steps
``T``, light slots ``S``). Subclasses declare the trailing axes of each field
in ``_AXES`` and the dtype family in ``_DTYPES``; ``validate()`` checks both
once, where data enters (file loaders, the YAML boundary), never in hot loops.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

T = TypeVar("T", bound="TensorData")

_FAMILY = {
    "float": (torch.float32, torch.float64),
    "int": (torch.int8, torch.int16, torch.int32, torch.int64),
    "bool": (torch.bool,),
}


class TensorData:
    """Mixin: shape/dtype validation, numpy round trip, indexing along axes."""

    _AXES: ClassVar[dict[str, tuple[str, ...]]] = {}
    _DTYPES: ClassVar[dict[str, str]] = {}

    # --- introspection -------------------------------------------------
    @classmethod
    def tensor_fields(cls) -> tuple[str, ...]:
        return tuple(cls._AXES)

    def validate(self: T) -> T:
        """Check dtypes and that all fields agree on named axis sizes.

        Returns self so it can be chained: ``load(...).validate()``.
        Raises ValueError naming the type, the field and what was expected.
        """
        name = type(self).__name__
        sizes: dict[str, int] = {}
        batch: tuple[int, ...] | None = None
        for field, axes in self._AXES.items():
            value = getattr(self, field)
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name}.{field}: expected a torch.Tensor, got {type(value).__name__}")
            family = self._DTYPES[field]
            if value.dtype not in _FAMILY[family]:
                raise ValueError(f"{name}.{field}: expected a {family} tensor, got {value.dtype}")
            if value.ndim < len(axes):
                raise ValueError(f"{name}.{field}: expected trailing axes {list(axes)}, got shape {list(value.shape)}")
            lead = tuple(value.shape[: value.ndim - len(axes)])
            if batch is None:
                batch = lead
            elif lead != batch:
                raise ValueError(f"{name}.{field}: batch shape {list(lead)} differs from {list(batch)}")
            for axis, size in zip(axes, value.shape[value.ndim - len(axes):]):
                if axis == "_":
                    continue
                if sizes.setdefault(axis, size) != size:
                    raise ValueError(
                        f"{name}.{field}: axis {axis} has size {size}, other fields have {sizes[axis]}"
                    )
            if family == "float" and not torch.isfinite(value).all():
                raise ValueError(f"{name}.{field}: contains NaN or Inf")
        return self

    # --- conversion ----------------------------------------------------
    def to_numpy(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f).detach().cpu().numpy() for f in self._AXES}

    @classmethod
    def from_numpy(cls: type[T], arrays: dict[str, Any], **extra: Any) -> T:
        kwargs = {f: torch.from_numpy(np.ascontiguousarray(arrays[f])) for f in cls._AXES}
        return cls(**kwargs, **extra)

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)

    def map_tensors(self: T, fn) -> T:
        return dataclasses.replace(self, **{f: fn(getattr(self, f), axes) for f, axes in self._AXES.items()})

    def index_axis(self: T, axis: str, index: Any) -> T:
        """Index every field along the named axis (e.g. ``"T"``, ``"A"``)."""

        def pick(t: torch.Tensor, axes: tuple[str, ...]) -> torch.Tensor:
            if axis not in axes:
                return t
            dim = t.ndim - len(axes) + axes.index(axis)
            sl = [slice(None)] * t.ndim
            sl[dim] = index
            return t[tuple(sl)]

        return self.map_tensors(pick)

    def pad_axis(self: T, axis: str, size: int) -> T:
        """Zero-pad (False for masks) every field along ``axis`` up to ``size``."""

        def pad(t: torch.Tensor, axes: tuple[str, ...]) -> torch.Tensor:
            if axis not in axes:
                return t
            dim = t.ndim - len(axes) + axes.index(axis)
            missing = size - t.shape[dim]
            if missing < 0:
                raise ValueError(f"cannot pad axis {axis} of size {t.shape[dim]} down to {size}")
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t, torch.zeros(shape, dtype=t.dtype)], dim=dim)

        return self.map_tensors(pad)
