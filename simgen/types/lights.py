"""Traffic lights: one *light slot* per signalised connection, ``[.., S, T]``.

A light slot is one SUMO link: approach lane + junction (via) lane, with its
stop point at the end of the approach lane. SUMO's state characters map to
``LightState`` with ``LIGHT_STATE_FROM_SUMO``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

import torch

from simgen.types.base import TensorData


class LightState(enum.IntEnum):
    UNKNOWN = 0
    STOP = 1
    CAUTION = 2
    GO = 3


LIGHT_STATE_FROM_SUMO: dict[str, LightState] = {
    **dict.fromkeys("rR", LightState.STOP),
    **dict.fromkeys("yYu", LightState.CAUTION),
    **dict.fromkeys("gGs", LightState.GO),
    **dict.fromkeys("oO", LightState.UNKNOWN),
}


def light_states_from_sumo(state: str) -> list[int]:
    """Map a SUMO ``getRedYellowGreenState`` string to LightState values."""
    return [int(LIGHT_STATE_FROM_SUMO.get(c, LightState.UNKNOWN)) for c in state]


@dataclass(frozen=True)
class TrafficLights(TensorData):
    """Per-step light-slot states. All fields ``[.., S, T]``."""

    signal_id: torch.Tensor  # int32, index into RoadMap.signal_* tables
    lane_id: torch.Tensor  # int32, controlled (approach) lane, index into RoadMap lanes
    stop_x: torch.Tensor  # world frame, m (end of the approach lane)
    stop_y: torch.Tensor
    state: torch.Tensor  # int8, LightState
    valid: torch.Tensor  # bool

    _AXES: ClassVar = {f: ("S", "T") for f in ("signal_id", "lane_id", "stop_x", "stop_y", "state", "valid")}
    _DTYPES: ClassVar = {"signal_id": "int", "lane_id": "int", "stop_x": "float", "stop_y": "float",
                         "state": "int", "valid": "bool"}

    @property
    def num_slots(self) -> int:
        return self.state.shape[-2]
