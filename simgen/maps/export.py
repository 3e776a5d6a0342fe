"""``export_map``: a map folder a person can open without simgen.

    OUT/
      map.npz       the RoadMap (docs/FORMATS.md)
      map.json      name, counts, bounds, lane km, attribution, versions
      net.net.xml   the SUMO network it came from (decompressed)
      preview.png   top-down picture: lanes, road edges, crosswalks, junctions, stop points at step 0
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402

from simgen import FORMAT_VERSION  # noqa: E402
from simgen.io import atomic_dir, save_map, version_info, write_json  # noqa: E402
from simgen.maps.netfile import lane_polygons, outlines  # noqa: E402
from simgen.maps.source import MapSource, resolve_map  # noqa: E402
from simgen.types import LaneKind, LightState, RoadMap  # noqa: E402

LANE_COLOURS = {LaneKind.DRIVING: "#8a8a8a", LaneKind.BIKE: "#c98f6b", LaneKind.SIDEWALK: "#d8d8d8",
                LaneKind.WALKINGAREA: "#d8d8d8"}
LIGHT_COLOURS = {LightState.UNKNOWN: "#9e9e9e", LightState.STOP: "#e53935", LightState.CAUTION: "#fbc02d",
                 LightState.GO: "#43a047"}
PREVIEW_WIDTH_IN, PREVIEW_DPI = 12.0, 150


def export_map(spec: str, out_dir: Path, *, seed: int = 0, cache_dir: Path | None = None,
               **generator_options: Any) -> MapSource:
    """Resolve ``spec`` (see ``resolve_map``) and write the folder above atomically.

    Returns the MapSource with ``net_file`` (and ``roadmap.net_file``) pointing at ``OUT/net.net.xml``.
    """
    source = resolve_map(spec, seed=seed, cache_dir=cache_dir, **generator_options)
    out_dir = Path(out_dir).resolve()
    net_file = out_dir / "net.net.xml"
    roadmap = source.roadmap.replace(net_file=str(net_file))
    with atomic_dir(out_dir) as tmp:
        save_map(roadmap, tmp / "map.npz")
        write_json(tmp / "map.json", map_summary(roadmap, source.attribution))
        opener = gzip.open if source.net_file.suffix == ".gz" else open
        with opener(source.net_file, "rb") as src, open(tmp / net_file.name, "wb") as dst:
            shutil.copyfileobj(src, dst)
        save_preview(roadmap, tmp / "preview.png")
    return MapSource(roadmap, net_file, source.name, source.attribution)


def map_summary(roadmap: RoadMap, attribution: str) -> dict[str, Any]:
    """The ``map.json`` content: counts, bounds (m), driving lane km and versions."""
    kind = roadmap.lane_kind
    driving = roadmap.vehicle_lanes
    return {
        "name": roadmap.name,
        "format_version": FORMAT_VERSION,
        "num_lanes": roadmap.num_lanes,
        "num_lanes_by_kind": {k.name.lower(): int((kind == k).sum()) for k in LaneKind},
        "num_junction_lanes": int(roadmap.lane_is_junction.sum()),
        "num_signals": roadmap.num_signals,
        "num_tls": len(roadmap.tls_ids),
        "num_crosswalks": roadmap.crosswalk_xy.shape[0],
        "num_junctions": roadmap.junction_xy.shape[0],
        "bounds_m": [round(float(v), 2) for v in roadmap.bounds],
        "driving_lane_km": round(float(roadmap.lane_length_m[driving].sum()) / 1000, 3),
        "attribution": attribution,
        "net_file": roadmap.net_file,
        "versions": version_info(),
    }


def ring_list(xy, valid) -> list[np.ndarray]:
    """Padded ``[N, P, 2]`` tensors -> list of ``[n_i, 2]`` arrays."""
    return [p[v] for p, v in zip(xy.numpy(), valid.numpy())]


def scale_bar_m(width_m: float) -> float:
    """A round length (1, 2 or 5 x 10^n m) close to a fifth of ``width_m``."""
    target = width_m / 5
    exponent = 10 ** np.floor(np.log10(target))
    return max(m * exponent for m in (1, 2, 5) if m * exponent <= target)


def save_preview(roadmap: RoadMap, path: Path, step: int = 0) -> None:
    """Top-down picture of ``roadmap`` with stop points coloured by the static programs at ``step``."""
    xmin, ymin, xmax, ymax = roadmap.bounds.tolist()
    height_in = PREVIEW_WIDTH_IN * np.clip((ymax - ymin) / max(xmax - xmin, 1.0), 0.3, 2.0)
    fig, ax = plt.subplots(figsize=(PREVIEW_WIDTH_IN, height_in))
    ax.set_facecolor("#eef3e8")

    lanes = ring_list(roadmap.lane_xy, roadmap.lane_point_valid)
    kind = roadmap.lane_kind.numpy()
    ax.add_collection(PolyCollection(ring_list(roadmap.junction_xy, roadmap.junction_valid),
                                     facecolor="#7d7d7d", edgecolor="none", zorder=1))
    for k, colour in LANE_COLOURS.items():
        idx = np.flatnonzero(kind == k)
        if k == LaneKind.WALKINGAREA:  # SUMO stores a walking area's outline, not a centerline
            polygons = [lanes[i] for i in idx if len(lanes[i]) >= 3]
        else:
            polygons = outlines(lane_polygons([lanes[i] for i in idx], roadmap.lane_width_m.numpy()[idx]))
        ax.add_collection(PolyCollection(polygons, facecolor=colour, edgecolor="none", zorder=2))
    crosswalks = PolyCollection(ring_list(roadmap.crosswalk_xy, roadmap.crosswalk_valid), facecolor="white",
                                edgecolor="#555555", linewidth=0.3, zorder=3)
    crosswalks.set_hatch("////")
    ax.add_collection(crosswalks)
    ax.add_collection(LineCollection(ring_list(roadmap.road_edge_xy, roadmap.road_edge_valid),
                                     colors="black", linewidths=0.35, zorder=4))
    states = roadmap.signal_state_at(step).numpy() if roadmap.num_signals else np.zeros(0, dtype=np.int8)
    stop = roadmap.signal_stop_xy.numpy()
    ax.scatter(stop[:, 0], stop[:, 1], s=6, c=[LIGHT_COLOURS[LightState(s)] for s in states], zorder=5)

    bar = scale_bar_m(xmax - xmin)
    x0, y0 = xmin + 0.03 * (xmax - xmin), ymin - 0.04 * (ymax - ymin)
    ax.plot([x0, x0 + bar], [y0, y0], color="black", linewidth=3, solid_capstyle="butt", zorder=6)
    ax.text(x0 + bar / 2, y0, f"{bar:g} m", ha="center", va="bottom", fontsize=9, zorder=6)

    ax.set_xlim(xmin - 0.02 * (xmax - xmin), xmax + 0.02 * (xmax - xmin))
    ax.set_ylim(ymin - 0.08 * (ymax - ymin), ymax + 0.02 * (ymax - ymin))
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{roadmap.name}: {roadmap.num_lanes} lanes, {roadmap.num_signals} light slots "
                 f"({len(roadmap.tls_ids)} lights), {roadmap.crosswalk_xy.shape[0]} crosswalks; "
                 f"lights at step {step}")
    fig.savefig(path, dpi=PREVIEW_DPI, bbox_inches="tight")
    plt.close(fig)
