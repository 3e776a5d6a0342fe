"""Driving logs for splat reconstruction: multi-view images, camera poses, lidar points and actor boxes per frame.

Two layouts are read (both in docs/FORMATS.md):

- a ``simgen render`` output (``frames/NNNNN/camera_<name>.png``, ``cameras.npz``, ``lidar_<name>.npz``,
  ``actors.npz``); the AV, which carries the sensors, is not an actor;
- the plain layout a user fills with their own data (``frames/<id>/camera_<name>.png|jpg``, ``frame.json`` with
  intrinsics, ``world_from_camera`` and boxes, ``points.npy`` with world-frame lidar points).

``load_log`` checks everything once, here, and raises ``LogError`` naming the file, the field and the fix
(missing poses, images whose size differs from the camera's first frame, empty point clouds). Images can be
resampled on load (``resolution``): a box filter, with intrinsics scaled to match.

Split (``split_views``): every 8th frame (frame index % 8 == 0) is held out on all cameras; optionally one whole
camera is held out too (it tests extrapolation to a viewpoint never trained on).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from simgen.types import AgentType

TYPE_NAMES = {"vehicle": int(AgentType.VEHICLE), "pedestrian": int(AgentType.PEDESTRIAN),
              "cyclist": int(AgentType.CYCLIST), "unset": int(AgentType.UNSET)}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class LogError(ValueError):
    """A log folder cannot be reconstructed; the message names the file, the field and the fix."""


@dataclass(frozen=True)
class LogData:
    """One log, checked and resampled: T frames, C cameras of one size, K actors."""

    root: Path
    layout: str  # "simgen" | "plain"
    frame_ids: tuple[str, ...]  # [T]
    camera_names: tuple[str, ...]  # [C]
    width: int
    height: int
    images: torch.Tensor  # [T, C, H, W, 3] uint8, sRGB
    world_from_camera: torch.Tensor  # [T, C, 4, 4] float64, OpenCV camera axes
    intrinsics: torch.Tensor  # [T, C, 3, 3] float64, px at (width, height)
    points: tuple[torch.Tensor, ...]  # T x [N_t, 3] float32 lidar returns, world frame, m
    actor_ids: tuple[int, ...]  # [K]
    actor_types: tuple[int, ...]  # [K] AgentType
    boxes: torch.Tensor  # [K, T, 7] float32 x, y, z (ground), length, width, height, heading; 0 where absent
    present: torch.Tensor  # [K, T] bool

    @property
    def num_frames(self) -> int:
        return len(self.frame_ids)

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    def viewmats(self, frame: int, cameras: list[int] | None = None) -> torch.Tensor:
        """``[C, 4, 4]`` float32 world -> camera of ``frame``."""
        pose = self.world_from_camera[frame] if cameras is None else self.world_from_camera[frame, cameras]
        return torch.linalg.inv(pose).float()


@dataclass(frozen=True)
class Split:
    train: tuple[tuple[int, int], ...]  # (frame, camera) pairs
    heldout: tuple[tuple[int, int], ...]  # every 8th frame, the trained cameras
    heldout_camera: tuple[tuple[int, int], ...]  # every frame of the held-out camera (empty when none)
    protocol: dict


def split_views(log: LogData, every: int = 8, holdout_camera: str | None = None) -> Split:
    """Hold out frames ``t % every == 0`` on all cameras and, optionally, every frame of ``holdout_camera``."""
    if holdout_camera is not None and holdout_camera not in log.camera_names:
        raise LogError(f"--holdout-camera {holdout_camera}: not a camera of {log.root} "
                       f"(cameras: {', '.join(log.camera_names)})")
    held_cam = log.camera_names.index(holdout_camera) if holdout_camera else -1
    train, heldout, extra = [], [], []
    for t in range(log.num_frames):
        for c in range(log.num_cameras):
            if c == held_cam:
                extra.append((t, c))
            elif t % every == 0:
                heldout.append((t, c))
            else:
                train.append((t, c))
    if not train or not heldout:
        raise LogError(f"{log.root}: {log.num_frames} frames give {len(train)} training and {len(heldout)} held-out "
                       f"views with every {every}th frame held out; give at least 2 frames")
    protocol = {"cameras": [n for n in log.camera_names if n != holdout_camera], "resolution": [log.width, log.height],
                "frames": list(log.frame_ids), "heldout_frames": [log.frame_ids[t] for t in range(0, log.num_frames,
                                                                                                     every)],
                "split": f"frames with index % {every} == 0 held out on every camera; the rest train",
                "heldout_camera": holdout_camera, "train_views": len(train), "heldout_views": len(heldout)}
    return Split(tuple(train), tuple(heldout), tuple(extra), protocol)


# --- reading ----------------------------------------------------------------------------------------------------

def load_log(root: str | Path, resolution: tuple[int, int] | None = None, frames: slice | None = None) -> LogData:
    """Read a ``simgen render`` output or a plain log folder; resample images to ``resolution`` (W, H)."""
    root = Path(root)
    folder = root / "frames"
    if not folder.is_dir():
        raise LogError(f"{root}: no frames/ folder; give a `simgen render` output or a log in the plain layout "
                       "of docs/FORMATS.md (frames/<id>/camera_<name>.png + frame.json + points.npy)")
    dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if frames is not None:
        dirs = dirs[frames]
    if not dirs:
        raise LogError(f"{folder}: no frame folders; each frame is a folder frames/<id>/")
    if (dirs[0] / "cameras.npz").is_file():
        layout, read = "simgen", _read_simgen_frame
    elif (dirs[0] / "frame.json").is_file():
        layout, read = "plain", _read_plain_frame
    else:
        raise LogError(f"{dirs[0]}: neither cameras.npz (a `simgen render` output) nor frame.json (the plain "
                       "layout of docs/FORMATS.md); add frame.json with each camera's intrinsics and "
                       "world_from_camera")
    records = [read(d) for d in dirs]
    return _assemble(root, layout, dirs, records, resolution)


def _camera_names(folder: Path) -> list[str]:
    return sorted(p.stem[len("camera_"):] for p in folder.iterdir()
                  if p.name.startswith("camera_") and p.suffix.lower() in IMAGE_SUFFIXES)


def _image_path(folder: Path, name: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"camera_{name}{suffix}"
        if path.is_file():
            return path
    raise LogError(f"{folder}: no image camera_{name}.png (or .jpg) while the first frame has one; give every "
                   "frame an image from every camera")


def _matrix(value, shape: tuple[int, int], where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise LogError(f"{where}: not a numeric matrix; give a {shape[0]}x{shape[1]} list of lists") from None
    if array.shape != shape or not np.isfinite(array).all():
        raise LogError(f"{where}: expected a finite {shape[0]}x{shape[1]} matrix, got shape {array.shape}")
    return array


def _read_simgen_frame(folder: Path) -> dict:
    cams_path = folder / "cameras.npz"
    if not cams_path.is_file():
        raise LogError(f"{cams_path}: missing camera poses (field <name>/world_from_camera); re-render the frame "
                       "with `simgen render --sensors lidar,cameras`")
    cams = dict(np.load(cams_path))
    names = _camera_names(folder)
    cameras = {}
    for name in names:
        for key in ("world_from_camera", "intrinsics"):
            if f"{name}/{key}" not in cams:
                raise LogError(f"{cams_path}: field '{name}/{key}' is missing (camera poses); re-render the frame "
                               "with `simgen render`")
        cameras[name] = (_image_path(folder, name), cams[f"{name}/intrinsics"], cams[f"{name}/world_from_camera"])
    points = []
    lidar_files = sorted(folder.glob("lidar_*.npz"))
    if not lidar_files:
        raise LogError(f"{folder}: no lidar_<name>.npz; the reconstruction starts from lidar points: render with "
                       "`simgen render --sensors lidar,cameras`")
    for path in lidar_files:
        lidar = np.load(path)
        for key in ("xyz", "world_from_lidar"):
            if key not in lidar:
                raise LogError(f"{path}: field '{key}' is missing; re-render the frame with `simgen render`")
        pose = lidar["world_from_lidar"]
        points.append(lidar["xyz"].astype(np.float64) @ pose[:3, :3].T + pose[:3, 3])
    actors_path = folder / "actors.npz"
    actors = []
    if actors_path.is_file():
        a = np.load(actors_path)
        for i in range(len(a["object_id"])):
            if not bool(a["is_av"][i]):
                actors.append((int(a["object_id"][i]), int(a["agent_type"][i]), a["box"][i].astype(np.float64)))
    return {"cameras": cameras, "points": np.concatenate(points), "points_source": str(lidar_files[0]),
            "actors": actors}


def _read_plain_frame(folder: Path) -> dict:
    path = folder / "frame.json"
    if not path.is_file():
        raise LogError(f"{path}: missing; each frame folder needs frame.json with the cameras' intrinsics and "
                       "world_from_camera poses (docs/FORMATS.md, plain log layout)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise LogError(f"{path}: not valid JSON ({err})") from None
    cams = meta.get("cameras")
    if not isinstance(cams, dict):
        raise LogError(f"{path}: field 'cameras' is missing; add {{\"<name>\": {{\"intrinsics\": 3x3, "
                       "\"world_from_camera\": 4x4}}} for every camera_<name> image")
    cameras = {}
    for name in _camera_names(folder):
        entry = cams.get(name)
        if not isinstance(entry, dict) or "world_from_camera" not in entry:
            raise LogError(f"{path}: field 'cameras.{name}.world_from_camera' is missing (missing pose); add the "
                           "camera's 4x4 world-from-camera pose (OpenCV axes: x right, y down, z forward), m")
        if "intrinsics" not in entry:
            raise LogError(f"{path}: field 'cameras.{name}.intrinsics' is missing; add the 3x3 K in px")
        cameras[name] = (_image_path(folder, name), _matrix(entry["intrinsics"], (3, 3), f"{path}: cameras.{name}."
                                                                                          "intrinsics"),
                         _matrix(entry["world_from_camera"], (4, 4), f"{path}: cameras.{name}.world_from_camera"))
    points_path = folder / "points.npy"
    if not points_path.is_file():
        raise LogError(f"{points_path}: missing; give the frame's lidar points as an [N, 3] float array, world "
                       "frame, m (numpy.save)")
    points = np.load(points_path, allow_pickle=False)
    if points.ndim != 2 or points.shape[1] < 3:
        raise LogError(f"{points_path}: shape {points.shape}; expected [N, 3] world-frame points, m")
    actors = []
    for i, entry in enumerate(meta.get("actors", [])):
        where = f"{path}: actors[{i}]"
        if not isinstance(entry, dict) or "id" not in entry or "box" not in entry:
            raise LogError(f"{where}: give {{\"id\": int, \"type\": \"vehicle\", \"box\": [x, y, z, length, width, "
                           "height, heading]}")
        box = np.asarray(entry["box"], dtype=np.float64)
        if box.shape != (7,) or not np.isfinite(box).all() or (box[3:6] <= 0).any():
            raise LogError(f"{where}.box: expected 7 finite numbers x, y, z, length, width, height (> 0), heading")
        kind = entry.get("type", "vehicle")
        if kind not in TYPE_NAMES:
            raise LogError(f"{where}.type: '{kind}'; choose one of {', '.join(TYPE_NAMES)}")
        actors.append((int(entry["id"]), TYPE_NAMES[kind], box))
    return {"cameras": cameras, "points": points[:, :3].astype(np.float64), "points_source": str(points_path),
            "actors": actors}


def _assemble(root: Path, layout: str, dirs: list[Path], records: list[dict],
              resolution: tuple[int, int] | None) -> LogData:
    names = sorted(records[0]["cameras"])
    if not names:
        raise LogError(f"{dirs[0]}: no camera_<name>.png images")
    sizes: dict[str, tuple[int, int]] = {}
    images, poses, intrinsics, points = [], [], [], []
    for folder, record in zip(dirs, records):
        if sorted(record["cameras"]) != names:
            raise LogError(f"{folder}: cameras {sorted(record['cameras'])}, but {dirs[0]} has {names}; give every "
                           "frame the same cameras")
        if len(record["points"]) == 0:
            raise LogError(f"{record['points_source']}: empty point cloud (0 points); the reconstruction starts "
                           "from and is supervised by lidar points: give the frame's returns or leave the frame out")
        frame_images, frame_k = [], []
        for name in names:
            path, k, pose = record["cameras"][name]
            image = Image.open(path).convert("RGB")
            size = image.size
            first = sizes.setdefault(name, size)
            if size != first:
                raise LogError(f"{path}: {size[0]}x{size[1]} px, but camera '{name}' is {first[0]}x{first[1]} px in "
                               f"{dirs[0]}; give every frame of a camera the same image size")
            target = resolution or sizes[names[0]]
            if size != tuple(target):
                k = np.diag([target[0] / size[0], target[1] / size[1], 1.0]) @ k
                image = image.resize(tuple(target), Image.BOX if target[0] < size[0] else Image.BICUBIC)
            frame_images.append(np.asarray(image))
            frame_k.append(k)
            poses.append(pose)
        images.append(np.stack(frame_images))
        intrinsics.append(np.stack(frame_k))
        points.append(torch.from_numpy(record["points"]).float())
    ids = sorted({a[0] for r in records for a in r["actors"]})
    index = {actor_id: k for k, actor_id in enumerate(ids)}
    types = {a[0]: a[1] for r in records for a in r["actors"]}
    boxes = np.zeros((len(ids), len(records), 7), np.float32)
    present = np.zeros((len(ids), len(records)), bool)
    for t, record in enumerate(records):
        for actor_id, _, box in record["actors"]:
            boxes[index[actor_id], t], present[index[actor_id], t] = box, True
    h, w = images[0].shape[1:3]
    return LogData(root=root, layout=layout, frame_ids=tuple(d.name for d in dirs), camera_names=tuple(names),
                   width=int(w), height=int(h), images=torch.from_numpy(np.stack(images)),
                   world_from_camera=torch.from_numpy(np.stack(poses).reshape(len(records), len(names), 4, 4)),
                   intrinsics=torch.from_numpy(np.stack(intrinsics)), points=tuple(points), actor_ids=tuple(ids),
                   actor_types=tuple(types[i] for i in ids), boxes=torch.from_numpy(boxes),
                   present=torch.from_numpy(present))


def write_plain_frame(folder: str | Path, images: dict[str, np.ndarray], intrinsics: dict[str, np.ndarray],
                      world_from_camera: dict[str, np.ndarray], points_world: np.ndarray,
                      actors: list[dict] | None = None) -> None:
    """Write one frame of the plain layout (a helper for users converting their logs, and for tests)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        Image.fromarray(np.asarray(image, np.uint8)).save(folder / f"camera_{name}.png")
    meta = {"cameras": {name: {"intrinsics": np.asarray(intrinsics[name]).tolist(),
                               "world_from_camera": np.asarray(world_from_camera[name]).tolist()} for name in images},
            "actors": actors or []}
    (folder / "frame.json").write_text(json.dumps(meta, indent=1) + "\n")
    np.save(folder / "points.npy", np.asarray(points_world, np.float32))
