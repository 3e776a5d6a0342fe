"""Save and load maps, scenes, logs and rollouts in the layout of docs/FORMATS.md.

Arrays go to ``.npz`` files written with fixed zip timestamps and sorted keys,
so identical content gives identical bytes (the determinism tests rely on it).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from simgen import FORMAT_VERSION, __version__
from simgen.types import AgentMeta, AgentTrajectory, RoadMap, Rollout, SceneState, TrafficLights


class FormatError(ValueError):
    """A file does not follow docs/FORMATS.md; the message names the file and the key."""


# --- deterministic npz -----------------------------------------------------

def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], compresslevel: int | None = None) -> None:
    """Write ``arrays`` as an uncompressed-header, deflated npz with fixed timestamps.

    ``compresslevel`` (zlib 1-9, default 6) trades size for speed: sensor frames use 1."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=compresslevel)


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise FormatError(f"{path}: not a readable .npz file ({err})") from err
    version = int(arrays.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise FormatError(f"{path}: format_version {version}, this simgen reads {FORMAT_VERSION}")
    return arrays


def _sub(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def _require(arrays: dict[str, np.ndarray], keys, path: Path, prefix: str = "") -> None:
    missing = [prefix + k for k in keys if k not in arrays]
    if missing:
        raise FormatError(f"{path}: missing arrays {missing} (see docs/FORMATS.md)")


# --- maps ------------------------------------------------------------------

def map_arrays(roadmap: RoadMap) -> dict[str, np.ndarray]:
    arrays = roadmap.to_numpy()
    arrays.update(
        format_version=np.int64(FORMAT_VERSION),
        lane_ids=np.array(roadmap.lane_ids, dtype=str),
        tls_ids=np.array(roadmap.tls_ids, dtype=str),
        name=np.array(roadmap.name),
        net_file=np.array(roadmap.net_file),
    )
    return arrays


def save_map(roadmap: RoadMap, path: str | os.PathLike) -> None:
    write_npz(path, map_arrays(roadmap))


def load_map(path: str | os.PathLike) -> RoadMap:
    path = Path(path)
    arrays = read_npz(path)
    _require(arrays, RoadMap.tensor_fields(), path)
    try:
        return RoadMap.from_numpy(
            arrays,
            name=str(arrays["name"]),
            lane_ids=tuple(str(s) for s in arrays["lane_ids"]),
            tls_ids=tuple(str(s) for s in arrays["tls_ids"]),
            net_file=str(arrays["net_file"]),
        ).validate()
    except ValueError as err:
        raise FormatError(f"{path}: {err}") from err


# --- scenes and rollouts ---------------------------------------------------

def scene_arrays(scene: SceneState) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"format_version": np.int64(FORMAT_VERSION)}
    for prefix, part in (("agent/", scene.traj), ("agent/", scene.meta), ("light/", scene.lights)):
        arrays.update({prefix + k: v for k, v in part.to_numpy().items()})
    arrays["av_pose"] = scene.av_pose().numpy().astype(np.float32)
    arrays["step"] = np.int64(scene.step)
    arrays["start_step"] = np.int64(scene.start_step)
    arrays["map_name"] = np.array(scene.map_name)
    return arrays


def scene_from_arrays(arrays: dict[str, np.ndarray], path: Path) -> SceneState:
    agent, light = _sub(arrays, "agent/"), _sub(arrays, "light/")
    _require(agent, AgentTrajectory.tensor_fields() + AgentMeta.tensor_fields(), path, "agent/")
    _require(light, TrafficLights.tensor_fields(), path, "light/")
    _require(arrays, ("step", "start_step"), path)
    try:
        return SceneState(
            traj=AgentTrajectory.from_numpy(agent),
            meta=AgentMeta.from_numpy(agent),
            lights=TrafficLights.from_numpy(light),
            step=int(arrays["step"]),
            start_step=int(arrays["start_step"]),
            map_name=str(arrays.get("map_name", "")),
        ).validate()
    except ValueError as err:
        raise FormatError(f"{path}: {err}") from err


def save_scene(scene: SceneState, path: str | os.PathLike) -> None:
    write_npz(path, scene_arrays(scene))


def load_scene(path: str | os.PathLike) -> SceneState:
    path = Path(path)
    return scene_from_arrays(read_npz(path), path)


def save_rollout_arrays(rollout: Rollout, path: str | os.PathLike) -> None:
    arrays = scene_arrays(rollout.state)
    arrays["route_lanes"] = rollout.route_lanes.numpy().astype(np.int32)
    arrays["history_steps"] = np.int64(rollout.history_steps)
    write_npz(path, arrays)


def load_rollout(run_dir: str | os.PathLike) -> tuple[Rollout, RoadMap, dict[str, Any]]:
    """Read a ``simgen rollout`` folder -> (Rollout, RoadMap, summary dict)."""
    run_dir = Path(run_dir)
    path = run_dir / "rollout.npz"
    arrays = read_npz(path)
    _require(arrays, ("route_lanes", "history_steps"), path)
    rollout = Rollout(
        state=scene_from_arrays(arrays, path),
        route_lanes=torch.from_numpy(arrays["route_lanes"]),
        history_steps=int(arrays["history_steps"]),
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    return rollout, load_map(run_dir / "map.npz"), summary


# --- logs ------------------------------------------------------------------

class Logs:
    """A ``simgen logs`` folder: the index plus lazy access to scenes and trips."""

    def __init__(self, root: Path, index: dict[str, Any]):
        self.root = root
        self.index = index

    @property
    def scene_entries(self) -> list[dict[str, Any]]:
        return self.index.get("scenes", [])

    @property
    def trip_entries(self) -> list[dict[str, Any]]:
        return self.index.get("trips", [])

    def roadmap(self) -> RoadMap:
        return load_map(self.root / "map.npz")

    def scene(self, i: int) -> SceneState:
        return load_scene(self.root / self.scene_entries[i]["file"])

    def trip(self, i: int) -> SceneState:
        return load_scene(self.root / self.trip_entries[i]["file"])

    def scenes(self) -> Iterator[SceneState]:
        return (self.scene(i) for i in range(len(self.scene_entries)))

    def __len__(self) -> int:
        return len(self.scene_entries)


def load_logs(log_dir: str | os.PathLike) -> Logs:
    root = Path(log_dir)
    index_path = root / "logs.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path}: no such file; is {root} a `simgen logs` output folder?")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise FormatError(f"{index_path}: not valid JSON ({err})") from err
    if index.get("format_version") != FORMAT_VERSION:
        raise FormatError(f"{index_path}: format_version {index.get('format_version')}, expected {FORMAT_VERSION}")
    return Logs(root, index)


# --- atomic output folders -------------------------------------------------

def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def version_info() -> dict[str, str]:
    from importlib.metadata import version

    return {"simgen": __version__, "format_version": str(FORMAT_VERSION),
            "sumo": version("eclipse-sumo"), "torch": torch.__version__}


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; move it to ``out`` only on success.

    On an exception the temporary folder is removed and ``out`` is untouched.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o755)  # mkdtemp makes it private; a run folder is for everyone to read
    if out.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{out}: already exists")
        shutil.rmtree(out)
    tmp.rename(out)
