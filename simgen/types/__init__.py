"""simgen's data model: frozen dataclasses of tensors with ``validate()``.

Units are SI, positions are in the map's world frame, the rate is 10 Hz.
The on-disk layout of these types is in docs/FORMATS.md.
"""

from simgen.types.agents import DT_S, Action, AgentMeta, AgentTrajectory, AgentType
from simgen.types.lights import LIGHT_STATE_FROM_SUMO, LightState, TrafficLights, light_states_from_sumo
from simgen.types.roadmap import LaneKind, RoadMap
from simgen.types.scene import NUM_FUTURE_STEPS, NUM_HISTORY_STEPS, Rollout, SceneState
from simgen.types.sensors import CameraSpec, LidarSpec, Mount, SensorRig

__all__ = [
    "DT_S", "NUM_HISTORY_STEPS", "NUM_FUTURE_STEPS", "Action", "AgentMeta", "AgentTrajectory", "AgentType",
    "LIGHT_STATE_FROM_SUMO", "LightState", "TrafficLights", "light_states_from_sumo", "LaneKind", "RoadMap",
    "SceneState", "Rollout", "CameraSpec", "LidarSpec", "Mount", "SensorRig",
]
