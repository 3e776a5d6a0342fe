"""Sensor-rig YAML -> ``SensorRig`` (pydantic v2, unknown keys forbidden), checked once at the boundary.

    load_rig("default")            # renderers/rigs/default.yaml: Waymo TOP-like lidar + 8 surround cameras
    load_rig("my_rig.yaml")        # a user's rig (same fields; see scenarios/README.md, "Sensor rigs")

Every problem becomes a ``RigError`` whose one line names the file, the key and the fix, e.g.
``my_rig.yaml: key 'lidars.0.inclinations_deg': Value error, 63 inclinations for beams: 64; list one
elevation per beam, top beam first``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from simgen.scenario import format_validation_error, read_yaml
from simgen.types.sensors import CameraSpec, LidarSpec, Mount, SensorRig

RIG_DIR = Path(__file__).parent / "rigs"


class RigError(ValueError):
    """Bad sensor-rig input; the message names the file, the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MountModel(_Strict):
    x_m: float = Field(0.0, description="forward of the AV box centre, m")
    y_m: float = Field(0.0, description="left of the AV box centre, m")
    z_m: float = Field(ge=0.0, le=10.0, description="above the ground, m")
    yaw_deg: float = Field(0.0, ge=-360, le=360, description="CCW seen from above, 0 = AV forward, deg")
    pitch_deg: float = Field(0.0, ge=-90, le=90, description="positive looks down, deg")
    roll_deg: float = Field(0.0, ge=-180, le=180, description="deg")

    def spec(self) -> Mount:
        return Mount((self.x_m, self.y_m, self.z_m), self.yaw_deg, self.pitch_deg, self.roll_deg)


class LidarModel(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_]+$", description="output name (letters, digits, _)")
    beams: int = Field(ge=1, le=512, description="number of beams = range-image rows")
    inclinations_deg: list[float] = Field(description="one elevation per beam, top beam first, deg")
    columns: int = Field(ge=8, le=20000, description="azimuth steps per sweep = range-image columns")
    max_range_m: float = Field(gt=0, le=1000, description="farthest return, m")
    min_range_m: float = Field(0.0, ge=0, description="nearest return, m")
    mount: MountModel
    ray_drop_probability: float = Field(0.0, ge=0, le=1, description="base chance a return is lost")
    range_noise_std_m: float = Field(0.0, ge=0, le=1, description="Gaussian range noise, m")
    beam_divergence_mrad: float = Field(3.0, ge=0, le=100, description="beam footprint growth, mrad")

    @field_validator("inclinations_deg")
    @classmethod
    def _beam_table(cls, value: list[float], info: ValidationInfo) -> list[float]:
        beams = info.data.get("beams")
        if beams is not None and len(value) != beams:
            raise ValueError(f"{len(value)} inclinations for beams: {beams}; list one elevation per beam, "
                             "top beam first")
        if any(b >= a for a, b in itertools.pairwise(value)):
            raise ValueError("inclinations must strictly decrease (top beam first = range-image row 0); "
                             "sort them from the highest to the lowest")
        if any(abs(v) >= 90 for v in value):
            raise ValueError("every inclination must lie strictly between -90 and 90 deg")
        return value

    def spec(self) -> LidarSpec:
        if self.min_range_m >= self.max_range_m:
            raise ValueError(f"lidar '{self.name}': min_range_m {self.min_range_m} is not below max_range_m "
                             f"{self.max_range_m}")
        return LidarSpec(self.name, tuple(self.inclinations_deg), self.columns, self.max_range_m, self.min_range_m,
                         self.mount.spec(), self.ray_drop_probability, self.range_noise_std_m,
                         self.beam_divergence_mrad)


class CameraModel(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_]+$", description="output name (letters, digits, _)")
    width: int = Field(ge=8, le=8192, description="image width, px")
    height: int = Field(ge=8, le=8192, description="image height, px")
    fx: float = Field(gt=0, description="focal length along x, px")
    fy: float = Field(gt=0, description="focal length along y, px")
    cx: float = Field(description="principal point x, px, inside [0, width]")
    cy: float = Field(description="principal point y, px, inside [0, height]")
    mount: MountModel
    max_depth_m: float = Field(300.0, gt=0, description="rays that hit nothing closer see the sky, m")

    @field_validator("cx", "cy")
    @classmethod
    def _principal_point(cls, value: float, info: ValidationInfo) -> float:
        size = info.data.get("width" if info.field_name == "cx" else "height")
        if size is not None and not 0 <= value <= size:
            raise ValueError(f"principal point {info.field_name}={value} lies outside the image [0, {size}] px; "
                             f"put it near the image centre ({size / 2})")
        return value

    def spec(self) -> CameraSpec:
        return CameraSpec(self.name, self.width, self.height, self.fx, self.fy, self.cx, self.cy, self.mount.spec(),
                          self.max_depth_m)


class RigModel(_Strict):
    name: str = Field("rig", description="rig name, written into summary.json")
    lidars: list[LidarModel] = Field(default_factory=list)
    cameras: list[CameraModel] = Field(default_factory=list)


def rig_path(spec: str | Path) -> Path:
    """A bundled rig name (``default``) or a YAML path -> the file."""
    text = str(spec)
    if "/" in text or text.endswith((".yaml", ".yml")):
        return Path(text)
    bundled = RIG_DIR / f"{text}.yaml"
    if not bundled.is_file():
        names = ", ".join(sorted(p.stem for p in RIG_DIR.glob("*.yaml")))
        raise RigError(f"unknown sensor rig '{text}'; bundled rigs: {names}; or give a path to a rig YAML")
    return bundled


def parse_rig(data: object, source: str = "<rig>") -> SensorRig:
    if not isinstance(data, dict):
        raise RigError(f"{source}: the top level must be a mapping (name:, lidars:, cameras:)")
    try:
        model = RigModel.model_validate(data)
        rig = SensorRig(model.name, tuple(m.spec() for m in model.lidars), tuple(m.spec() for m in model.cameras))
    except ValidationError as err:
        raise RigError(format_validation_error(source, err, RigModel)) from None
    except ValueError as err:
        raise RigError(f"{source}: {err}") from None
    names = [s.name for s in (*rig.lidars, *rig.cameras)]
    if len(set(names)) != len(names):
        raise RigError(f"{source}: sensor names must be unique (got {names}); rename the duplicates")
    return rig


def load_rig(spec: str | Path = "default") -> SensorRig:
    """Read and check a rig YAML (a bundled name or a path)."""
    path = rig_path(spec)
    return parse_rig(read_yaml(path, RigError, "sensor rig file "), str(path))
