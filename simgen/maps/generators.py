"""Build SUMO networks: generators by name (netgenerate) and imports (netconvert).

A generator is ``fn(net_file: Path, *, seed: int, **options) -> None`` that
writes a SUMO network to ``net_file``; register one with
``@register_generator("name")`` and ``resolve_map("name", **options)`` builds
it. The built-in ones (``grid``, ``spider``, ``random``) run netgenerate with
signals at every junction where enough traffic meets (``--tls.guess``),
sidewalks, pedestrian crossings and internal junction lanes. Their signal
offsets are drawn from the seed (0, a quarter or half a cycle per light), so
neighbouring junctions do not all switch together.
"""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

import numpy as np
import sumo

from simgen.maps.netfile import MapError

Generator = Callable[..., None]
GENERATORS: dict[str, Generator] = {}

TYPEMAPS = Path(sumo.SUMO_HOME) / "data" / "typemap"
OSM_TYPEMAPS = ("osmNetconvert.typ.xml", "osmNetconvertUrbanDe.typ.xml")  # roads + German urban speeds
GUESS_CITY = ["--tls.guess", "true", "--sidewalks.guess", "true", "--crossings.guess", "true"]


def register_generator(name: str) -> Callable[[Generator], Generator]:
    """Decorator: make ``fn`` available to ``resolve_map(name)``. A duplicate name is an error."""

    def register(fn: Generator) -> Generator:
        if name in GENERATORS:
            raise ValueError(f"map generator '{name}' is already registered ({GENERATORS[name].__module__}."
                             f"{GENERATORS[name].__qualname__}); pick another name")
        GENERATORS[name] = fn
        return fn

    return register


def run_sumo_tool(tool: str, args: list[str], source: str) -> None:
    """Run ``$SUMO_HOME/bin/<tool> args``; raise MapError with its error lines if it fails."""
    cmd = [str(Path(sumo.SUMO_HOME) / "bin" / tool), *args]
    env = {**os.environ, "SUMO_HOME": sumo.SUMO_HOME}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("Error:")] or lines[-1:] or ["no output"]
        raise MapError(f"{tool} failed on {source} (exit {proc.returncode}): {' / '.join(errors)}; "
                       "check the input file and the options")


def netgenerate(net_file: Path, seed: int, lanes: int, speed_mps: float, args: list[str]) -> None:
    """netgenerate ``args`` (the network shape) with simgen's city defaults and seeded signal offsets."""
    common = [*args, "--default.lanenumber", str(lanes), "--default.speed", str(speed_mps), *GUESS_CITY,
              "--seed", str(seed), "--output-file", str(net_file)]
    run_sumo_tool("netgenerate", common, f"a {args[0]} network")
    tls_ids = sorted({tl.get("id") for tl in ET.parse(net_file).getroot().iter("tlLogic")})
    shift = np.random.default_rng(seed).integers(0, 3, size=len(tls_ids))  # 0: none, 1: quarter, 2: half a cycle
    offsets = [(flag, ",".join(t for t, s in zip(tls_ids, shift) if s == k))
               for k, flag in ((1, "--tls.quarter-offset"), (2, "--tls.half-offset"))]
    extra = [a for flag, ids in offsets if ids for a in (flag, ids)]
    if extra:  # same seed, same network: only the offsets change
        run_sumo_tool("netgenerate", [*common, *extra], f"a {args[0]} network")


@register_generator("grid")
def grid(net_file: Path, *, seed: int = 0, blocks: int = 5, block_length_m: float = 175.0, lanes: int = 2,
         speed_mps: float = 13.89, attach_length_m: float = 100.0) -> None:
    """A Manhattan grid of ``blocks`` x ``blocks`` blocks, each ``block_length_m`` long, with roads
    of ``attach_length_m`` leaving the border (so border junctions are 4-way too)."""
    netgenerate(net_file, seed, lanes, speed_mps, [
        "--grid", "--grid.number", str(blocks + 1), "--grid.length", str(block_length_m),
        "--grid.attach-length", str(attach_length_m)])


@register_generator("spider")
def spider(net_file: Path, *, seed: int = 0, arms: int = 6, circles: int = 4, ring_spacing_m: float = 150.0,
           lanes: int = 2, speed_mps: float = 13.89, omit_center: bool = True) -> None:
    """A spider web: ``arms`` radial roads crossing ``circles`` rings ``ring_spacing_m`` apart."""
    netgenerate(net_file, seed, lanes, speed_mps, [
        "--spider", "--spider.arm-number", str(arms), "--spider.circle-number", str(circles),
        "--spider.space-radius", str(ring_spacing_m), *(["--spider.omit-center"] if omit_center else [])])


@register_generator("random")
def random_net(net_file: Path, *, seed: int = 0, iterations: int = 100, min_distance_m: float = 100.0,
           max_distance_m: float = 250.0, lanes: int = 2, speed_mps: float = 13.89) -> None:
    """A random planar network grown for ``iterations`` edges of ``min..max_distance_m``."""
    netgenerate(net_file, seed, lanes, speed_mps, [
        "--rand", "--rand.iterations", str(iterations), "--rand.min-distance", str(min_distance_m),
        "--rand.max-distance", str(max_distance_m)])


def convert_osm(osm_file: Path, net_file: Path) -> None:
    """OpenStreetMap XML -> SUMO net: urban type map, guessed signals, sidewalks and crossings."""
    typemaps = ",".join(str(TYPEMAPS / t) for t in OSM_TYPEMAPS)
    run_sumo_tool("netconvert", [
        "--osm-files", str(osm_file), "--type-files", typemaps, *GUESS_CITY, "--tls.guess-signals", "true",
        "--geometry.remove", "true", "--junctions.join", "true", "--roundabouts.guess", "true",
        "--ramps.guess", "true", "--output.street-names", "true", "--output-file", str(net_file)], str(osm_file))


def convert_opendrive(xodr_file: Path, net_file: Path) -> None:
    """OpenDRIVE -> SUMO net, with guessed signals, sidewalks and crossings."""
    run_sumo_tool("netconvert", [
        "--opendrive-files", str(xodr_file), *GUESS_CITY, "--output-file", str(net_file)], str(xodr_file))
