"""Scenario YAML -> validated ``Scenario`` (pydantic v2, unknown keys forbidden).

Every field documents its unit. ``load()`` turns any problem into a
``ScenarioError`` whose one-line message names the file, the key, and what was
expected, so the CLI can print it and exit with code 2. Field-by-field docs for
users are in scenarios/README.md.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simgen.traffic.demand import Demand


class ScenarioError(ValueError):
    """Bad scenario input; the message names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Route(_Strict):
    from_edge: str = Field("auto", alias="from", description="SUMO edge id where the AV starts, or 'auto'")
    to_edge: str = Field("auto", alias="to", description="SUMO edge id the AV drives to, or 'auto'")

    # SUMO edge ids are often all digits; YAML would read them as numbers
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, coerce_numbers_to_str=True)


class AV(_Strict):
    policy: str = Field("idm_route", description="AV policy: idm_route | constant_velocity | log_replay | module:Class")
    route: Route = Field(default_factory=Route, description="the AV's A->B trip")


class Traffic(_Strict):
    vehicles_per_hour_per_km: float = Field(Demand.vehicles_per_hour_per_km, ge=0,
                                            description="vehicle demand per km of driving lane, 1/h/km")
    pedestrians_per_hour_per_km: float = Field(Demand.pedestrians_per_hour_per_km, ge=0,
                                               description="pedestrian demand per km of driving lane, 1/h/km")
    cyclists_per_hour_per_km: float = Field(Demand.cyclists_per_hour_per_km, ge=0,
                                            description="cyclist demand per km of driving lane, 1/h/km")
    warmup_s: float = Field(300.0, ge=0, description="SUMO runs this long before the AV enters (maps start "
                                                     "empty and fill in about 5 min), s")


class SceneConfig(_Strict):
    radius_m: float = Field(60.0, gt=0, description="agents within this distance of the AV are in the scene, m")
    num_agents_max: int = Field(256, ge=2, le=4096, description="rows for agents over the whole trip")


class Outputs(_Strict):
    bev_video: bool = Field(True, description="write bev.mp4")
    video_size: int = Field(800, ge=128, le=2048, description="BEV video width and height, px")
    view_radius_m: float = Field(60.0, gt=0, description="BEV half-width around the AV, m")


class Sensors(_Strict):
    rig: str = Field("default", description="sensor rig: a bundled name (default) or a rig YAML path")
    lidar: bool = Field(True, description="sweep the rig's lidars")
    cameras: bool = Field(True, description="render the rig's cameras")
    weather: Literal["clear", "rain", "fog"] = Field("clear", description="camera shading only")
    time_of_day: str = Field("12:00", pattern=r"^([01]?\d|2[0-3]):[0-5]\d$", description="local solar time, HH:MM")
    frames: str = Field(":", description="steps A:B of the rollout to render (end excluded), A:, :B or K")
    workers: int = Field(1, ge=1, le=64, description="parallel render processes")


WorldName = Literal["log_replay", "constant_velocity", "idm", "sumo"]


class Scenario(_Strict):
    map: str = Field(description="map generator (grid|spider|random), bundled map (berlin|...), or a file path")
    map_options: dict[str, Any] = Field(default_factory=dict, description="options for a map generator")
    seed: int = Field(0, ge=0, description="seeds SUMO demand, the world and every policy")
    duration_s: float = Field(60.0, gt=0, le=3600, description="closed-loop time after 1.1 s of history, s")
    av: AV = Field(default_factory=AV)
    world: str = Field("sumo", description="who drives everyone but the AV: log_replay | constant_velocity | idm | sumo")
    traffic: Traffic = Field(default_factory=Traffic)
    scene: SceneConfig = Field(default_factory=SceneConfig)
    outputs: Outputs = Field(default_factory=Outputs)
    sensors: Sensors | None = Field(None, description="render lidar and cameras into OUT/sensors (see simgen render)")

    @property
    def steps(self) -> int:
        return int(round(self.duration_s * 10))


def format_validation_error(source: str, err: ValidationError, root: type[BaseModel]) -> str:
    """The first error of ``root.model_validate`` as one line naming ``source``, the key and the fix."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(root, first["loc"][:-1])
        return f"{source}: unknown key '{key}'; allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return f"{source}: missing required key '{key}'"
    value = first.get("input")
    return f"{source}: key '{key}': {first['msg']} (got {value!r})"


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        if isinstance(part, int):  # an item of a list of sections
            continue
        field = model.model_fields.get(str(part))
        annotation = field and (typing.get_args(field.annotation) or (field.annotation,))[0]
        if not isinstance(annotation, type) or not issubclass(annotation, BaseModel):
            break
        model = annotation
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _apply_override(data: dict[str, Any], assignment: str, source: str) -> None:
    if "=" not in assignment:
        raise ScenarioError(f"{source}: --set '{assignment}' must look like key.sub=value")
    key, raw = assignment.split("=", 1)
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ScenarioError(f"{source}: --set '{key}': '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def parse(data: Any, source: str = "<scenario>", overrides: list[str] = ()) -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: the top level must be a mapping of keys (map:, seed:, ...)")
    data = dict(data)
    for assignment in overrides:
        _apply_override(data, assignment, source)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as err:
        raise ScenarioError(format_validation_error(source, err, Scenario)) from None
    from simgen.agents import POLICIES, WORLDS

    if scenario.world not in WORLDS and ":" not in scenario.world:
        raise ScenarioError(f"{source}: key 'world': unknown world '{scenario.world}'; "
                            f"choose one of {', '.join(sorted(WORLDS))} or module:Class")
    if scenario.av.policy not in POLICIES and ":" not in scenario.av.policy:
        raise ScenarioError(f"{source}: key 'av.policy': unknown policy '{scenario.av.policy}'; "
                            f"choose one of {', '.join(sorted(POLICIES))} or module:Class")
    return scenario


def load(path: str | Path, overrides: list[str] = ()) -> Scenario:
    """Read and validate a scenario YAML file. ``overrides`` are ``key.sub=value`` strings."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"{path}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ScenarioError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse(data, str(path), overrides)
