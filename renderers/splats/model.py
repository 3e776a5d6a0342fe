"""The Gaussian scene model of a driving log: static background Gaussians plus one set per actor, in its box frame.

As in Street Gaussians and OmniRe, the background lives in the world frame and each actor's Gaussians live in
its box frame, posed per frame by that frame's box; adding, removing or moving an actor is editing a box.

Notation:

| symbol | meaning |
|---|---|
| N, K | number of Gaussians (background and actors together), number of actors |
| owner | ``[N]`` int64: -1 for a background Gaussian, ``k`` for a Gaussian of actor ``k`` |
| box | ``[7]`` x, y, z (ground height), length, width, height (m), heading (rad), world frame (docs/FORMATS.md) |
| box frame | origin at the box's ground centre (x, y, z), +x along the heading, +y left, +z up, m |
| T | training frames of the log the scene was fitted to |

Raw (trainable) parameters carry gsplat's names and the standard 3DGS activations:

| name | shape | activation (``SplatParams.gaussians``) |
|---|---|---|
| ``means`` | [N, 3] | none; world frame (background) or box frame (actors), m |
| ``quats`` | [N, 4] | normalised, w x y z |
| ``scales`` | [N, 3] | exp (log of the standard deviations, m) |
| ``opacities`` | [N] | sigmoid (logit) |
| ``sh0`` | [N, 3] | colour = clamp(0.5 + C0 sh0, 0, 1), C0 = 0.28209479 (SH degree 0: view-independent colour) |

Besides the Gaussians a scene holds a sky: a low-resolution latitude-longitude radiance map ``sky`` [3, 16, 64]
(raw, sigmoid activation) looked up by the world direction of each pixel's ray, composited behind the splats.

Posing a frame (``frame_gaussians``):
    1. Per actor ``k`` present in the frame, its box gives ``world_from_box_k``: rotation Rz(heading), translation
       (x, y, z); the background uses the identity.
    2. Gaussians of absent actors are dropped; the rest get means' = R_o means + t_o and quats' = q_o ⊗ quats.
    3. Scales, opacities and colours are unchanged (the box size only matters when an actor is put into a box of
       another size, ``resize_actor``).

On disk (docs/FORMATS.md, "Splat scene"): ``gaussians.npz`` (raw parameters, owner, sky) and ``scene.json`` (the
actor table and training frames), plus an optional ``scene.ply`` export in the common 3DGS layout.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simgen import FORMAT_VERSION, io
from simgen.renderers.splats.rasterize import Gaussians

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "quats", "scales", "opacities", "sh0")
SKY_SHAPE = (3, 16, 64)  # channels, elevation rows (top = straight up), azimuth columns


class SceneFormatError(ValueError):
    """A splat scene folder does not follow docs/FORMATS.md; the message names the file, field and fix."""


# --- rotations ------------------------------------------------------------------------------------------------

def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a ⊗ b`` of wxyz quaternions, ``[..., 4]``."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], -1)


def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` unit wxyz quaternions -> ``[N, 3, 3]`` rotations."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def box_poses(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[K, 7]`` boxes -> ``world_from_box`` as rotation ``[K, 3, 3]``, translation ``[K, 3]`` and quaternion
    ``[K, 4]`` (wxyz, a turn by the heading about +z)."""
    heading = boxes[:, 6]
    c, s = torch.cos(heading), torch.sin(heading)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rotation = torch.stack([c, -s, zero, s, c, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    quat = torch.stack([torch.cos(heading / 2), zero, zero, torch.sin(heading / 2)], -1)
    return rotation, boxes[:, :3], quat


def world_to_box(points: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``[P, 3]`` world points -> the frame of one box ``[7]``."""
    rotation, translation, _ = box_poses(box[None])
    return (points - translation) @ rotation[0]


# --- parameters -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SplatParams:
    """Raw Gaussian parameters (module docstring) with their owners; background means in the world frame,
    actor means in their box frames."""

    means: torch.Tensor  # [N, 3] m
    quats: torch.Tensor  # [N, 4] wxyz, unnormalised
    scales: torch.Tensor  # [N, 3] log m
    opacities: torch.Tensor  # [N] logit
    sh0: torch.Tensor  # [N, 3] SH DC
    owner: torch.Tensor  # [N] int64, -1 background, k actor

    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    def raw(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in PARAM_NAMES}

    def select(self, keep: torch.Tensor) -> SplatParams:
        """The Gaussians where ``keep`` ([N] bool or indices) holds."""
        return SplatParams(**{k: v[keep] for k, v in self.raw().items()}, owner=self.owner[keep])

    def gaussians(self) -> Gaussians:
        """Activated Gaussians in the frames their means are in (no posing)."""
        return Gaussians(means=self.means, quats=torch.nn.functional.normalize(self.quats, dim=-1),
                         scales=torch.exp(self.scales), opacities=torch.sigmoid(self.opacities),
                         colors=(0.5 + SH_C0 * self.sh0).clamp(0.0, 1.0))

    @staticmethod
    def from_points(points: torch.Tensor, colors: torch.Tensor, scales_m: torch.Tensor, owner: torch.Tensor,
                    opacity: float = 0.1) -> SplatParams:
        """Isotropic Gaussians at ``points`` [N, 3] with ``colors`` [N, 3] in [0, 1] and std ``scales_m`` [N]."""
        n = points.shape[0]
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        return SplatParams(means=points.float().clone(), quats=quats,
                           scales=torch.log(scales_m.float().clamp_min(1e-3))[:, None].repeat(1, 3),
                           opacities=torch.full((n,), math.log(opacity / (1 - opacity))),
                           sh0=(colors.float().clamp(0.02, 0.98) - 0.5) / SH_C0, owner=owner.long().clone())

    @staticmethod
    def concat(parts: list[SplatParams]) -> SplatParams:
        return SplatParams(**{k: torch.cat([getattr(p, k) for p in parts]) for k in (*PARAM_NAMES, "owner")})


# --- the scene ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Actor:
    """One reconstructed actor: its id in the log, type, median box size and box per training frame."""

    actor_id: int  # the log's id (simgen logs: the rollout's ``agent/object_id``)
    agent_type: int  # ``AgentType``
    size_m: tuple[float, float, float]  # length, width, height


@dataclass(frozen=True)
class SplatScene:
    """A fitted scene: parameters, sky, actor table and the training frames' boxes."""

    params: SplatParams
    sky: torch.Tensor  # [3, 16, 64] raw (sigmoid)
    actors: tuple[Actor, ...]
    frame_ids: tuple[str, ...]  # [T] names of the log's frames (simgen logs: the rollout step, 5 digits)
    boxes: torch.Tensor  # [K, T, 7] box of every actor in every frame (0 where absent)
    present: torch.Tensor  # [K, T] bool
    info: dict[str, Any] = field(default_factory=dict)  # free-form: source log, protocol, scene centre

    @property
    def num_actors(self) -> int:
        return len(self.actors)

    def frame_boxes(self, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``[K, 7]`` and presence ``[K]`` of training frame index ``frame``."""
        return self.boxes[:, frame], self.present[:, frame]


def frame_gaussians(params: SplatParams, boxes: torch.Tensor, present: torch.Tensor) -> Gaussians:
    """World-frame Gaussians of one frame: the background plus every present actor posed by its box.

    ``boxes`` [K, 7] and ``present`` [K] bool follow the actor order of ``params.owner``. Differentiable in the
    raw parameters (and in ``boxes``)."""
    g = params.gaussians()
    device = params.means.device
    boxes, present = boxes.to(device), present.to(device)
    owner = params.owner
    keep = owner < 0
    if boxes.shape[0]:
        keep = keep | present[owner.clamp_min(0)] & (owner >= 0)
    index = torch.nonzero(keep).squeeze(1)
    owner = owner[index]
    rotation, translation, quat = box_poses(boxes.float()) if boxes.shape[0] else (None, None, None)
    eye = torch.eye(3, device=device).expand(1, 3, 3)
    rotation = torch.cat([eye, rotation]) if rotation is not None else eye
    origin = torch.zeros(1, 3, device=device)
    translation = torch.cat([origin, translation]) if translation is not None else origin
    identity = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=device)
    quat = torch.cat([identity, quat]) if quat is not None else identity
    slot = owner + 1  # 0 = background (identity)
    means = torch.einsum("nij,nj->ni", rotation[slot], g.means[index]) + translation[slot]
    quats = quat_multiply(quat[slot], g.quats[index])
    return Gaussians(means=means, quats=quats, scales=g.scales[index], opacities=g.opacities[index],
                     colors=g.colors[index])


def resize_actor(params: SplatParams, actor: int, ratio: torch.Tensor) -> SplatParams:
    """Stretch actor ``actor``'s Gaussians by ``ratio`` [3] (new size / old size along box x, y, z): means scale
    per axis, standard deviations by the geometric mean of the ratios (exact for isotropic stretches)."""
    mask = params.owner == actor
    means, scales = params.means.clone(), params.scales.clone()
    ratio = ratio.to(means.device)
    means[mask] = means[mask] * ratio
    scales[mask] = scales[mask] + torch.log(ratio).mean()
    return replace(params, means=means, scales=scales)


def sky_colors(sky: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Sky radiance [..., 3] in [0, 1] for world-frame unit ``directions`` [..., 3] (bilinear lookup in the
    latitude-longitude map; azimuth wraps)."""
    shape = directions.shape[:-1]
    d = directions.reshape(-1, 3)
    elevation = torch.asin(d[:, 2].clamp(-1.0, 1.0))  # +pi/2 up
    azimuth = torch.atan2(d[:, 1], d[:, 0])  # (-pi, pi]
    # grid_sample coordinates in [-1, 1]; pad one column on each side so azimuth wraps
    width = sky.shape[2]
    padded = torch.cat([sky[:, :, -1:], sky, sky[:, :, :1]], dim=2)
    x = (azimuth / math.pi) * width / (width + 2)
    y = -elevation / (math.pi / 2)
    grid = torch.stack([x, y], -1)[None, None]
    out = torch.nn.functional.grid_sample(padded[None], grid, mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return torch.sigmoid(out[0, :, 0].T).reshape(*shape, 3)


def initial_sky(color: tuple[float, float, float] = (0.6, 0.7, 0.85)) -> torch.Tensor:
    c = torch.tensor(color).clamp(0.01, 0.99)
    return torch.logit(c)[:, None, None].expand(*SKY_SHAPE).clone()


# --- save / load ----------------------------------------------------------------------------------------------

def save_scene(scene: SplatScene, folder: str | Path) -> None:
    """Write ``gaussians.npz`` and ``scene.json`` into ``folder`` (docs/FORMATS.md, "Splat scene")."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    p = scene.params
    arrays = {"format_version": np.int64(FORMAT_VERSION), "owner": p.owner.numpy().astype(np.int32),
              "sky": scene.sky.detach().float().numpy(),
              "actor/box": scene.boxes.detach().float().numpy().reshape(scene.num_actors, len(scene.frame_ids), 7),
              "actor/present": scene.present.numpy().astype(bool).reshape(scene.num_actors, len(scene.frame_ids))}
    arrays.update({name: t.detach().float().numpy() for name, t in p.raw().items()})
    io.write_npz(folder / "gaussians.npz", arrays)
    meta = {"format_version": FORMAT_VERSION, "num_gaussians": p.num_gaussians,
            "num_background": int((p.owner < 0).sum()), "frames": list(scene.frame_ids),
            "actors": [{"index": k, "actor_id": a.actor_id, "agent_type": a.agent_type, "size_m": list(a.size_m),
                        "num_gaussians": int((p.owner == k).sum())} for k, a in enumerate(scene.actors)],
            "activations": {"means": "none (background: world frame; actors: box frame), m",
                            "quats": "normalise, wxyz", "scales": "exp, m", "opacities": "sigmoid",
                            "sh0": "clamp(0.5 + 0.28209479 * sh0, 0, 1)", "sky": "sigmoid"},
            "info": scene.info}
    (folder / "scene.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_scene(folder: str | Path) -> SplatScene:
    """Read a folder written by ``save_scene`` (or ``simgen reconstruct``)."""
    folder = Path(folder)
    meta_path, arrays_path = folder / "scene.json", folder / "gaussians.npz"
    for path in (meta_path, arrays_path):
        if not path.is_file():
            raise SceneFormatError(f"{path}: missing; a splat scene folder holds scene.json and gaussians.npz "
                                   "(written by `simgen reconstruct`)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise SceneFormatError(f"{meta_path}: not valid JSON ({err})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise SceneFormatError(f"{meta_path}: format_version {meta.get('format_version')}, this simgen reads "
                               f"{FORMAT_VERSION}")
    arrays = io.read_npz(arrays_path)
    missing = [k for k in (*PARAM_NAMES, "owner", "sky", "actor/box", "actor/present") if k not in arrays]
    if missing:
        raise SceneFormatError(f"{arrays_path}: missing field(s) {', '.join(missing)}; re-export the scene")
    tensors = {k: torch.from_numpy(arrays[k]).float() for k in PARAM_NAMES}
    params = SplatParams(**tensors, owner=torch.from_numpy(arrays["owner"]).long())
    actors = tuple(Actor(int(a["actor_id"]), int(a["agent_type"]), tuple(float(s) for s in a["size_m"]))
                   for a in meta["actors"])
    return SplatScene(params=params, sky=torch.from_numpy(arrays["sky"]).float(), actors=actors,
                      frame_ids=tuple(meta["frames"]), boxes=torch.from_numpy(arrays["actor/box"]).float(),
                      present=torch.from_numpy(arrays["actor/present"]).bool(), info=meta.get("info", {}))


# --- .ply export ----------------------------------------------------------------------------------------------

PLY_FIELDS = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
              "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


def export_ply(gaussians: Gaussians, path: str | Path) -> None:
    """Write world-frame Gaussians as a binary little-endian 3DGS ``.ply`` (the layout of the original 3DGS code,
    opened by standard splat viewers): position, zero normals, SH DC, opacity logit, log scales, wxyz rotation."""
    with torch.no_grad():
        opacity = gaussians.opacities.clamp(1e-6, 1 - 1e-6)
        columns = [gaussians.means, torch.zeros_like(gaussians.means), (gaussians.colors - 0.5) / SH_C0,
                   torch.log(opacity / (1 - opacity))[:, None], torch.log(gaussians.scales),
                   torch.nn.functional.normalize(gaussians.quats, dim=-1)]
        data = torch.cat([c.float() for c in columns], 1).numpy().astype("<f4")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {data.shape[0]}",
              *(f"property float {name}" for name in PLY_FIELDS), "end_header"]
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(np.ascontiguousarray(data).tobytes())


def read_ply(path: str | Path) -> dict[str, np.ndarray]:
    """Read a binary little-endian float ``.ply`` of one vertex element -> ``{property: [N]}`` (for tests and
    for importing 3DGS scenes)."""
    raw = Path(path).read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    if lines[0] != "ply" or "binary_little_endian" not in lines[1]:
        raise SceneFormatError(f"{path}: not a binary little-endian .ply")
    count = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    names = [line.split()[2] for line in lines if line.startswith("property float")]
    data = np.frombuffer(raw[end:], dtype="<f4", count=count * len(names)).reshape(count, len(names))
    return {name: data[:, i] for i, name in enumerate(names)}
