"""``resolve_map(spec)``: a generator name, bundled map name or file path -> ``MapSource``.

Generated and imported networks are built into a cache folder (``cache_dir``,
else ``$SIMGEN_CACHE``, else ``~/.cache/simgen/maps``), one sub-folder per
hash of (spec, options, seed, SUMO version, importer version), holding
``net.net.xml`` and the built ``map.npz``. SUMO nets given directly (and the
bundled maps) are read in place; only their ``map.npz`` is cached, keyed by
the file's content. A second call loads ``map.npz`` (about 50 ms for berlin).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import sumo

from simgen.io import atomic_dir, load_map, save_map
from simgen.maps.generators import GENERATORS, convert_opendrive, convert_osm
from simgen.maps.netfile import MapError, roadmap_from_net
from simgen.types import RoadMap

IMPORTER_VERSION = 2  # bump when roadmap_from_net changes what it builds: invalidates cached map.npz
OSM_ATTRIBUTION = "Map data © OpenStreetMap contributors, ODbL 1.0"
SUMO_GAME = Path(sumo.SUMO_HOME) / "tools" / "game"
BUNDLED: dict[str, Path] = {  # real city nets shipped in the eclipse-sumo wheel (see README.md)
    "berlin": SUMO_GAME / "DRT" / "osm.net.xml",
    "braunschweig": SUMO_GAME / "bs3d" / "bs.net.xml",
    "ingolstadt": SUMO_GAME / "fkk_in" / "ingolstadt.net.xml.gz",
}
BUNDLED_ATTRIBUTION = OSM_ATTRIBUTION + " (via the Eclipse SUMO distribution)"
NET_SUFFIXES = (".net.xml", ".net.xml.gz")
CONVERTERS: dict[str, Callable[[Path, Path], None]] = {
    ".osm": convert_osm, ".osm.xml": convert_osm, ".xodr": convert_opendrive,
}
SUFFIXES = (*NET_SUFFIXES, *CONVERTERS)
NET_NAME = "net.net.xml"  # a built net's name inside its cache folder


@dataclass(frozen=True)
class MapSource:
    roadmap: RoadMap
    net_file: Path  # the SUMO network the roadmap came from
    name: str
    attribution: str  # "" or the licence text to show with the map (ODbL for OSM data)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SIMGEN_CACHE", Path.home() / ".cache" / "simgen")) / "maps"


def cache_key(name: str, seed: int, options: dict[str, Any], content: str = "") -> str:
    """Folder name for one build: ``<name>-<16 hex digits>``."""
    blob = json.dumps({"name": name, "seed": seed, "options": options, "content": content,
                       "sumo": version("eclipse-sumo"), "importer": IMPORTER_VERSION}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_build(folder: Path, name: str, *, net_file: Path | None = None,
                 build_net: Callable[[Path], None] | None = None) -> tuple[RoadMap, Path]:
    """Load ``folder/map.npz``, or build it and return (RoadMap, path of its SUMO net).

    Either ``build_net(path)`` writes a new net (kept in the folder as ``net.net.xml``) or the existing
    ``net_file`` is read in place.
    """
    if (folder / "map.npz").is_file():
        roadmap = load_map(folder / "map.npz")
        return roadmap, Path(roadmap.net_file)
    try:
        with atomic_dir(folder, overwrite=False) as tmp:
            if build_net is not None:
                build_net(tmp / NET_NAME)
                net_file, built = folder / NET_NAME, tmp / NET_NAME
            else:
                built = net_file
            roadmap = roadmap_from_net(built, name).replace(net_file=str(net_file))
            save_map(roadmap, tmp / "map.npz")
    except FileExistsError as err:  # another process finished the same build first: use theirs
        if not (folder / "map.npz").is_file():
            raise MapError(f"{folder}: map cache folder without map.npz; delete the folder") from err
        return cached_build(folder, name, net_file=net_file, build_net=build_net)
    return roadmap, net_file


def check_generator_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``options`` against the generator's keyword arguments; MapError names the valid ones."""
    params = inspect.signature(GENERATORS[name]).parameters
    valid = [p for p in params if params[p].kind == inspect.Parameter.KEYWORD_ONLY and p != "seed"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise MapError(f"map generator '{name}': unknown option(s) {unknown}; valid options: {', '.join(valid)}")
    return options


def map_suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), path.suffix.lower())


def resolve_map(spec: str | os.PathLike, *, seed: int = 0, cache_dir: Path | None = None,
                **generator_options: Any) -> MapSource:
    """A map spec -> ``MapSource`` (see the module docstring).

    ``spec`` is a generator name (``grid``, ``spider``, ``random`` or a registered one; ``seed`` and keyword
    options go to it), a bundled map (``berlin``, ``braunschweig``, ``ingolstadt``) or a path to ``.net.xml``,
    ``.net.xml.gz``, ``.osm``, ``.osm.xml`` or ``.xodr``. Same spec, options and seed -> same RoadMap.
    Raises MapError for unknown names, missing or unsupported files, unreadable nets and tool failures.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    spec = str(spec)
    if spec in GENERATORS:
        options = check_generator_options(spec, generator_options)
        roadmap, net_file = cached_build(cache / cache_key(spec, seed, options), spec,
                                         build_net=lambda net: GENERATORS[spec](net, seed=seed, **options))
        return MapSource(roadmap, net_file, spec, "")
    if generator_options:
        raise MapError(f"map '{spec}': options {sorted(generator_options)} are only for generators "
                       f"({', '.join(GENERATORS)})")
    if spec in BUNDLED:
        path = BUNDLED[spec]
        if not path.is_file():
            raise MapError(f"bundled map '{spec}': {path} is missing; reinstall eclipse-sumo==1.28.*")
        roadmap, net_file = cached_build(cache / cache_key(spec, 0, {}, file_digest(path)), spec, net_file=path)
        return MapSource(roadmap, net_file, spec, BUNDLED_ATTRIBUTION)
    return resolve_file(Path(spec), cache)


def resolve_file(path: Path, cache: Path) -> MapSource:
    """A ``.net.xml[.gz]``, ``.osm[.xml]`` or ``.xodr`` file -> ``MapSource`` (cached by content)."""
    suffix = map_suffix(path)
    if not suffix and len(path.parts) == 1:
        raise MapError(f"unknown map name '{path}'; valid names: generators {', '.join(GENERATORS)}, bundled maps "
                       f"{', '.join(BUNDLED)}; or give a path to a {', '.join(SUFFIXES)} file")
    if suffix not in SUFFIXES:
        raise MapError(f"map file '{path}': unsupported type '{suffix}', expected one of {', '.join(SUFFIXES)}; "
                       "convert other formats to .net.xml with netconvert")
    if not path.is_file():
        raise MapError(f"map file '{path}' does not exist (resolved to {path.resolve()}); check the path")
    name = path.name[: -len(suffix)]
    folder = cache / cache_key(name, 0, {"suffix": suffix}, file_digest(path))
    if suffix in NET_SUFFIXES:
        roadmap, net_file = cached_build(folder, name, net_file=path.resolve())
        return MapSource(roadmap, net_file, name, "")
    convert = CONVERTERS[suffix]
    roadmap, net_file = cached_build(folder, name, build_net=lambda net: convert(path.resolve(), net))
    return MapSource(roadmap, net_file, name, OSM_ATTRIBUTION if convert is convert_osm else "")
