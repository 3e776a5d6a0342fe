"""``generate_logs``: SUMO runs cut into scene windows (and trips), in the LOG_DIR layout of docs/FORMATS.md.

Each worker is one SUMO run in its own process (libsumo holds one simulation
per process), with its own seed ``worker_seed(seed, w)`` for both the demand
(randomTrips.py) and SUMO. A run:

1. writes its demand and runs SUMO ``warmup_s`` without recording;
2. from then on records every step; every ``ANCHOR_EVERY_S`` it marks an
   *anchor*: the anchor step is the last history step of the windows cut
   there, and SUMO's state is saved at it (``states/``, shared by the windows
   of that anchor);
3. 80 steps after an anchor it picks up to ``AVS_PER_ANCHOR`` AVs, with the
   worker's random generator, among the vehicles (not cyclists) on the map
   at all 91 steps: moving ones (faster than 1 m/s at the anchor) first, and
   no two within ``radius_m`` of each other while others are left; each AV
   gives one window (``simgen.traffic.scenes.cut_window``);
4. with ``trip_seconds > 0`` also inserts one AV vehicle ``"av"`` at the end
   of the warm-up on a long random route and records its trip (the rules of
   ``reference_trip``): **one trip per worker**. A trip ends early if the AV
   reaches its destination.

Worker w makes ``scenes // workers`` windows, plus one for ``w < scenes % workers``.
Scene ids are global and ordered by worker, then by anchor, then by pick.
The output is deterministic for the same seed and number of workers.

Files: ``scenes/NNNNN.npz`` and ``trips/NNNNN.npz`` are scene arrays plus
``agent/sumo_id`` (str ``[A]``, the SUMO id per row, ``""`` for an empty row).
Object ids are unique in the whole LOG_DIR: worker w's agents get
``w * 10**9 + i``, i counting the agents of its run in order of first
appearance. SUMO ids repeat across workers (every run has its ``veh0``); a
SUMO id with the entry's ``worker_seed`` names one agent.
"""

from __future__ import annotations

import collections
import multiprocessing
import queue as queue_module
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import libsumo
import numpy as np
import torch

from simgen import FORMAT_VERSION, __version__
from simgen.io import atomic_dir, load_map, save_map, scene_arrays, version_info, write_json, write_npz
from simgen.progress import progress_bar
from simgen.traffic.demand import Demand, write_demand
from simgen.traffic.reference import AV_DEPART_TIMEOUT_S, AV_ROUTE_SPEED_MPS, AvTrip, choose_av_route, insert_av
from simgen.traffic.scenes import cut_window
from simgen.traffic.sumo import MOVING_MPS, Frame, SumoRecorder, close_run, open_run, sumo_args
from simgen.types import DT_S, NUM_FUTURE_STEPS, NUM_HISTORY_STEPS, AgentType, RoadMap, SceneState

ANCHOR_EVERY_S = 5.0  # time between anchors, s
AVS_PER_ANCHOR = 2  # windows cut at one anchor (different AVs)
WINDOW_STEPS = NUM_HISTORY_STEPS + NUM_FUTURE_STEPS
OBJECT_IDS_PER_WORKER = 10**9  # worker w's object ids are w * 1e9 + (order of first appearance in its run)


def worker_seed(seed: int, worker: int) -> int:
    """The SUMO / randomTrips seed of worker ``worker`` of a run with master ``seed`` (< 2**31)."""
    return int(np.random.SeedSequence([seed, worker]).generate_state(1)[0] % 2**31)


@dataclass(frozen=True)
class LogJob:
    """One worker's share of ``generate_logs`` (picklable, for the process pool)."""

    worker: int
    seed: int  # worker seed
    scenes: int
    trip_steps: int
    net_file: Path
    map_file: Path
    workdir: Path
    radius_m: float
    max_agents: int
    demand: Demand
    warmup_s: float


def save_log_scene(scene: SceneState, sumo_ids: list[str], worker: int, path: Path) -> None:
    """Write a window or trip of worker ``worker``: object ids offset to be unique in the LOG_DIR, plus SUMO ids."""
    object_id = scene.meta.object_id
    meta = scene.meta.replace(object_id=torch.where(object_id >= 0, object_id + worker * OBJECT_IDS_PER_WORKER, -1))
    write_npz(path, {**scene_arrays(scene.replace(meta=meta)), "agent/sumo_id": np.array(sumo_ids, dtype=str)})


class _Windows:
    """Anchors every ANCHOR_EVERY_S after the warm-up; cuts the windows of an anchor once its future is recorded."""

    def __init__(self, job: LogJob, recorder: SumoRecorder, roadmap: RoadMap, map_name: str, first_anchor: int,
                 on_scene: Callable[[], None]):
        self.job, self.recorder, self.roadmap, self.map_name = job, recorder, roadmap, map_name
        self.rng = np.random.default_rng(job.seed)
        self.frames: collections.deque[Frame] = collections.deque(maxlen=WINDOW_STEPS)
        self.next_anchor = first_anchor
        self.pending: list[tuple[int, str]] = []  # (anchor step, state file)
        self.num_anchors = 0
        self.entries: list[dict[str, Any]] = []
        self.on_scene = on_scene

    @property
    def done(self) -> bool:
        return len(self.entries) >= self.job.scenes

    def feed(self, frame: Frame) -> None:
        self.frames.append(frame)
        planned = len(self.entries) + AVS_PER_ANCHOR * len(self.pending)
        if frame.step == self.next_anchor and planned < self.job.scenes:
            state = f"states/{self.num_anchors:05d}.xml"
            libsumo.simulation.saveState(str(self.job.workdir / state))
            self.pending.append((frame.step, state))
            self.num_anchors += 1
        if frame.step >= self.next_anchor:
            self.next_anchor += round(ANCHOR_EVERY_S / DT_S)
        if self.pending and frame.step == self.pending[0][0] + NUM_FUTURE_STEPS:
            self._cut(*self.pending.pop(0))

    def _cut(self, anchor: int, state_file: str) -> None:
        frames = list(self.frames)
        registry = self.recorder.registry
        present = [set(f.object_id.tolist()) for f in frames]
        always = set.intersection(*present)
        now = frames[NUM_HISTORY_STEPS - 1]
        vehicles = now.object_id[registry.agent_type[now.object_id] == AgentType.VEHICLE]
        eligible = np.array(sorted(set(vehicles.tolist()) & always), dtype=np.int64)
        if len(eligible) == 0:
            return
        where = {int(o): i for i, o in enumerate(now.object_id)}
        rows = np.array([where[o] for o in eligible.tolist()])
        moving = now.speed_mps[rows] > MOVING_MPS
        order = self.rng.permutation(len(eligible))
        order = order[np.argsort(~moving[order], kind="stable")]  # moving first, random within
        wanted = min(AVS_PER_ANCHOR, self.job.scenes - len(self.entries))
        picked: list[int] = []
        for i in order.tolist():  # spread out: no two AVs within radius_m of each other ...
            if len(picked) < wanted and all(
                    np.hypot(*(now.xy[rows[i]] - now.xy[rows[j]])) > self.job.radius_m for j in picked):
                picked.append(i)
        for i in order.tolist():  # ... unless too few vehicles are far apart
            if len(picked) < wanted and i not in picked:
                picked.append(i)
        for i in picked:
            av = int(eligible[i])
            scene, sumo_ids = cut_window(frames, av, registry, self.roadmap, radius_m=self.job.radius_m,
                                         max_agents=self.job.max_agents, map_name=self.map_name)
            file = f"scenes/{len(self.entries):05d}.npz"
            save_log_scene(scene, sumo_ids, self.job.worker, self.job.workdir / file)
            self.entries.append({"file": file, "state_file": state_file, "worker_seed": self.job.seed,
                                 "av_sumo_id": sumo_ids[0], "start_step": scene.start_step,
                                 "num_agents": int((scene.meta.object_id >= 0).sum())})
            self.on_scene()


_progress_queue: Any = None  # in a pool worker: where finished items are reported


def _init_pool_worker(queue: Any) -> None:
    global _progress_queue
    _progress_queue = queue


def run_log_worker(job: LogJob, on_item: Callable[[], None] | None = None) -> dict[str, Any]:
    """One SUMO run: ``job.scenes`` windows and, with ``job.trip_steps``, one trip. Files go to ``job.workdir``.

    Each finished window or trip calls ``on_item`` (in-process) or is put on the pool's progress queue.
    SUMO's own errors come back as RuntimeError naming the worker (libsumo's cannot cross processes).
    """
    try:
        return _run_log_worker(job, on_item)
    except libsumo.TraCIException as err:
        raise RuntimeError(f"SUMO worker {job.worker} (seed {job.seed}): {err}") from None


def _run_log_worker(job: LogJob, on_item: Callable[[], None] | None) -> dict[str, Any]:
    t_start = time.perf_counter()
    advance = on_item or (lambda: _progress_queue.put(1))
    roadmap = load_map(job.map_file)
    map_name = roadmap.name
    for sub in ("scenes", "states", "trips"):
        (job.workdir / sub).mkdir(parents=True, exist_ok=True)
    warmup_steps = round(job.warmup_s / DT_S)
    anchors_needed = -(-job.scenes // AVS_PER_ANCHOR)
    horizon_s = (job.warmup_s + 2 * anchors_needed * ANCHOR_EVERY_S + WINDOW_STEPS * DT_S
                 + (AV_DEPART_TIMEOUT_S + (NUM_HISTORY_STEPS + job.trip_steps) * DT_S if job.trip_steps else 0))
    route_files = write_demand(job.net_file, job.workdir / "demand", seed=job.seed, end_s=horizon_s,
                               demand=job.demand)
    open_run(sumo_args(job.net_file, route_files, job.seed))
    try:
        recorder = SumoRecorder(roadmap)
        recorder.warm_up(job.warmup_s)
        windows = _Windows(job, recorder, roadmap, map_name, warmup_steps + NUM_HISTORY_STEPS, advance)
        trip = None
        if job.trip_steps:
            min_length_m = (NUM_HISTORY_STEPS + job.trip_steps) * DT_S * AV_ROUTE_SPEED_MPS
            insert_av(choose_av_route(roadmap, np.random.default_rng(job.seed), min_length_m))
            trip = AvTrip(recorder, roadmap, steps=job.trip_steps, radius_m=job.radius_m,
                          max_agents=job.max_agents, state_file=job.workdir / "states" / "trip.xml")
        while not (windows.done and (trip is None or trip.done)):
            frame = recorder.step()
            if frame.step * DT_S > horizon_s:
                raise RuntimeError(f"worker {job.worker}: the demand ran out after {len(windows.entries)} of "
                                   f"{job.scenes} windows; raise the demand or lower the number of scenes")
            windows.feed(frame)
            if trip is not None and not trip.done:
                trip.feed(frame)
    finally:
        close_run()
    trips = []
    if trip is not None:
        scene, sumo_ids = trip.scene(map_name)
        save_log_scene(scene, sumo_ids, job.worker, job.workdir / "trips" / "00000.npz")
        trips.append({"file": "trips/00000.npz", "state_file": "states/trip.xml", "worker_seed": job.seed,
                      "av_sumo_id": sumo_ids[0], "start_step": scene.start_step,
                      "num_agents": trip.follower.tracks.table.num_used, "dropped_agents": trip.follower.dropped,
                      "arrived_early": trip.arrived_early})
        advance()
    stats = recorder.stats
    return {"scenes": windows.entries, "trips": trips, "route_files": [str(f) for f in route_files],
            "stats": {"worker": job.worker, "worker_seed": job.seed, "steps": stats.steps,
                      "agent_steps": stats.agent_steps, "agents": len(recorder.registry),
                      "teleports": stats.teleports, "collisions": stats.collisions, "sumo_s": stats.sumo_s,
                      "record_s": stats.record_s, "total_s": time.perf_counter() - t_start}}


def generate_logs(map_spec: str, out: Path, *, scenes: int, seed: int, workers: int = 1, trip_seconds: float = 0,
                  radius_m: float = 60.0, max_agents: int = 128, demand: Demand | None = None,
                  progress: bool = True, warmup_s: float = 300.0, map_options: dict[str, Any] | None = None) -> Path:
    """Record SUMO traffic on ``map_spec`` into the LOG_DIR ``out`` (docs/FORMATS.md); returns ``out``.

    ``scenes`` windows (T = 91) and, if ``trip_seconds > 0``, one trip of that
    length per worker (T = 11 + trip steps) are cut from ``workers`` parallel
    SUMO runs (see the module docstring). ``map_spec`` goes to
    ``simgen.maps.resolve_map`` with ``seed`` (and a generator's ``map_options``). ``warmup_s``: SUMO runs this
    long before recording; a map starts empty and takes ~5 min to reach its
    steady density (``grid``: ~50 vehicles after 60 s, ~190 from 300 s on).
    ``out`` appears only when everything has been written. Read it back with
    ``simgen.io.load_logs``.
    """
    from simgen.maps import resolve_map

    if scenes < 0 or workers < 1 or (scenes == 0 and trip_seconds <= 0):
        raise ValueError(f"generate_logs: need scenes >= 0 (got {scenes}), workers >= 1 (got {workers}) and "
                         "something to record (scenes > 0 or trip_seconds > 0)")
    demand = demand or Demand()
    source = resolve_map(map_spec, seed=seed, **(map_options or {}))
    trip_steps = round(trip_seconds / DT_S)
    out = Path(out)
    with atomic_dir(out) as tmp:
        save_map(source.roadmap, tmp / "map.npz")
        shutil.copyfile(source.net_file, tmp / "net.net.xml")
        jobs = [LogJob(worker=w, seed=worker_seed(seed, w), scenes=scenes // workers + (w < scenes % workers),
                     trip_steps=trip_steps, net_file=tmp / "net.net.xml", map_file=tmp / "map.npz",
                     workdir=tmp / "work" / f"{w:03d}", radius_m=radius_m, max_agents=max_agents, demand=demand,
                     warmup_s=warmup_s) for w in range(workers)]
        total = scenes + (workers if trip_steps else 0)
        with progress_bar(f"logs {source.name}", total=total, enabled=progress) as advance:
            if workers == 1:
                results = [run_log_worker(jobs[0], on_item=advance)]
            else:
                ctx = multiprocessing.get_context("spawn")
                queue = ctx.Queue()
                with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_pool_worker,
                                         initargs=(queue,)) as pool:
                    futures = [pool.submit(run_log_worker, job) for job in jobs]
                    done = 0
                    while done < total and not any(f.done() and f.exception() for f in futures):
                        try:
                            queue.get(timeout=0.2)
                            advance()
                            done += 1
                        except queue_module.Empty:
                            continue
                    results = [f.result() for f in futures]
        index = _assemble(tmp, jobs, results)
        index.update(
            format_version=FORMAT_VERSION, simgen_version=__version__, sumo_version=version_info()["sumo"],
            map=source.name, map_options=map_options or {}, attribution=source.attribution, seed=seed, workers=workers, radius_m=radius_m,
            max_agents=max_agents, history_steps=NUM_HISTORY_STEPS, future_steps=NUM_FUTURE_STEPS, dt_s=DT_S,
            trip_steps=trip_steps, warmup_s=warmup_s, demand=asdict(demand),
            workers_info=[r["stats"] for r in results])
        write_json(tmp / "logs.json", index)
        shutil.rmtree(tmp / "work")
    return out


def _assemble(root: Path, jobs: list[LogJob], results: list[dict[str, Any]]) -> dict[str, Any]:
    """Move the workers' files to global names; returns the ``scenes`` and ``trips`` lists of logs.json."""
    for sub in ("scenes", "states", "trips"):
        (root / sub).mkdir()
    index: dict[str, list[dict[str, Any]]] = {"scenes": [], "trips": []}
    num_states = 0
    for job, result in zip(jobs, results):
        state_names: dict[str, str] = {}
        for kind in ("scenes", "trips"):
            for entry in result[kind]:
                if entry["state_file"] not in state_names:
                    state_names[entry["state_file"]] = f"states/{num_states:05d}.xml"
                    shutil.move(job.workdir / entry["state_file"], root / state_names[entry["state_file"]])
                    num_states += 1
                n = len(index[kind])
                file = f"{kind}/{n:05d}.npz"
                shutil.move(job.workdir / entry["file"], root / file)
                index[kind].append({**entry, "id": n, "file": file, "state_file": state_names[entry["state_file"]]})
    return index
