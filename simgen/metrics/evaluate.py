"""Realism of a world on logged scenes: ``evaluate``, ``evaluate_worlds`` and the ``simgen eval`` report.

    report = evaluate("logs/grid", "idm", rollouts=32, workers=2)
    report["meta_metric"], report["likelihoods"]["offroad_indication"]
    table = evaluate_worlds("logs/grid", ["constant_velocity", "idm", "sumo_branch", "log_copies"])
    table["worlds"]["idm"]["gap_closed"]
    write_report(table, "outputs/eval")                  # report.json, report.md, histograms.png
    log, rollouts = roll_out("logs/grid", 0, "sumo_branch", rollouts=4)   # one scene's rollouts

Protocol
--------
Each scene window of a LOG_DIR (docs/FORMATS.md: T = 91, last history step
10) is rolled out R times from its logged 11-step history (``mask_future``:
no world sees the logged future except ``log_replay``/``log_copies``) for 80
steps with ``simgen.sim.rollout.closed_loop``, and the R rollouts are scored
together by ``simgen.metrics.wosac.score_scene`` (WOSAC 2025 configuration).

- **WOSAC** (default): the world drives **every** row of the window, the AV's
  included (role ``all``), and every agent valid at the last history step is
  scored, as in the Waymo Open Sim Agents Challenge.
- **closed loop** (``av=POLICY``): the AV policy drives the AV's row (role
  ``av``) and the world every other row (role ``world``: rule-based worlds
  drop agents beyond the scene radius of the AV and may bring in new ones).
  Scored as above, the AV included.

The protocol used is written into the report (``protocol``).

Reference worlds (any registered world can be scored; these bracket them):

- ``constant_velocity``: the floor.
- ``log_copies``: R identical copies of the logged future, the per-scene
  ceiling (not 1: each logged value is scored against a histogram pooled over
  all steps).
- ``sumo_branch`` (``simgen.agents.sumo_branch``): SUMO reloaded from the
  scene's saved state with a seed per rollout and every vehicle's speed factor
  re-drawn (routes kept): the oracle.
- ``sumo``: the SUMO co-simulation, continued from the scene's saved state
  with only a new seed (``sumo_branch`` without re-drawing). With ``av`` the
  AV's SUMO vehicle follows the AV policy; without, SUMO drives every row.
  Both refuse logs whose saved states lack the scene's people (logs recorded
  before simgen saved states with SUMO's ``--save-state.transportables``).

Seeds: rollout r of item i (a scene, or a trip) uses the 31-bit seed
``rollout_seed(seed, kind, i, r)`` (numpy ``SeedSequence([seed, kind, i, r])``,
kind 0 for scenes, 1 for trips) for its ``torch.Generator`` and as
``PolicyContext.seed`` (SUMO's seed and the speed-factor draws of the SUMO
worlds). So a report does not depend on ``workers``, and the same seed gives
the same numbers.

Trips (``trips=True``): every trip in LOG_DIR/trips is rolled out R times in
closed loop, the world in role ``world`` and the AV on ``av`` (default
``log_replay``, so it follows its logged route), and all rollouts are scored
against all logged trips with ``simgen.metrics.trip.trip_jsd``.

Scenes run in parallel in a process pool (spawn; libsumo holds one simulation
per process, and a process runs one scene at a time).

Report (``report.json`` of one world)
-------------------------------------
=================  ================================================================
key                value
=================  ================================================================
``world``, ``av``  the world, the AV policy (null under the WOSAC protocol)
``logs``, ``map``  the LOG_DIR and its map
``protocol``       ``mode`` (``wosac`` | ``closed_loop``), ``text``, ``config``
                   ("WOSAC 2025 weights"), ``rollouts``, ``history_steps``,
                   ``future_steps``
``meta_metric``    mean over scenes of the per-scene meta-metric;
                   ``meta_metric_std`` its spread over scenes
``likelihoods``    per feature, mean over scenes of the per-scene likelihood score
``min_ade``        mean over scenes of minADE, m
``rates``          mean over scenes of the simulated collision / offroad /
                   violation rates
``per_scene``      list of ``{scene, meta_metric, likelihoods, min_ade, rates,
                   num_agents, seconds}`` (``seconds``: ``rollouts``, ``score``
                   (with the histograms), ``total``)
``histograms``     per feature: ``estimator``, bin ``edges`` (histogram features) and
                   counts of ``log`` and ``sim`` values pooled over the evaluated
                   agents and steps of all scenes (the entries the score uses;
                   undefined values left out); Bernoulli features count agents
                   (sim: agent-rollouts) without and with the event
``trip``           with trips: ``jsd`` per feature, ``composite``, ``trips``,
                   ``rollouts``, ``av``, ``seconds``; else null
``scenes``         the scene ids evaluated (the first N of the LOG_DIR)
``seeds``          the master ``seed`` and how rollout seeds derive from it
``timing``         ``total_s`` (the whole call), ``scene_s_mean``, ``workers``
``versions``       ``simgen.io.version_info()``
=================  ================================================================

Comparing worlds (``evaluate_worlds``; ``simgen eval --world a,b,c``)
--------------------------------------------------------------------
``{"worlds": {name: row}, "reports": {name: report}, "scenes", "protocol",
"seeds", "versions", "floor", "ceiling"}``. Each row holds ``meta_metric``
(absolute), ``gap_closed``, ``seconds_per_scene`` and ``per_scene``
(``{scene, meta_metric, gap_closed}``). The fraction of the gap closed is
(mean world − mean ``constant_velocity``) / (mean ``log_copies`` − mean
``constant_velocity``) over the same scenes, so both references must be among
the worlds (else it is null). Per-scene ratios blow up where constant velocity
is nearly perfect (queues); compare worlds on the means.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from simgen.io import atomic_dir, load_logs, read_npz, version_info, write_json
from simgen.types import NUM_FUTURE_STEPS, NUM_HISTORY_STEPS, AgentType, RoadMap, SceneState

CONFIG_NAME = "WOSAC 2025 weights"
FLOOR, CEILING = "constant_velocity", "log_copies"
# world names that evaluate runs as another registered world with options
WORLD_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {"sumo": ("sumo_branch", {"redraw_speed_factors": False})}
SAMPLER_SUFFIX = "@full"  # "world_model@full", "path/world.pt@full": the full-replanning sampler (K = 16, R = 1)


def world_spec(world: str) -> tuple[str, dict[str, Any]]:
    """A world as named on the command line -> (registered world, options): aliases, a world-model checkpoint
    path (``*.pt``) and the ``@full`` sampler suffix."""
    base, full = (world[:-len(SAMPLER_SUFFIX)], True) if world.endswith(SAMPLER_SUFFIX) else (world, False)
    if base.endswith(".pt"):
        name, options = "world_model", {"checkpoint": base}
    else:
        name, options = WORLD_ALIASES.get(base, (base, {}))
    if full:
        if name != "world_model":
            raise EvalError(f"world '{world}': only the world model has samplers ({SAMPLER_SUFFIX} after "
                            "world_model or a .pt checkpoint)")
        options = {**options, "sampler": "full"}
    return name, options
SUMO_WORLDS = ("sumo", "sumo_branch")
TRIP_AV = "log_replay"  # the AV of trip rollouts unless ``av`` is given: it follows its logged route
Kind = Literal["scenes", "trips"]


class EvalError(ValueError):
    """Bad evaluation input (unknown world, too many scenes, no trips); the message names the fix."""


def rollout_seed(seed: int, kind: Kind, item: int, rollout: int) -> int:
    """The 31-bit seed of rollout ``rollout`` of scene or trip ``item`` (module docstring, "Seeds")."""
    tag = 0 if kind == "scenes" else 1
    return int(np.random.SeedSequence([seed, tag, item, rollout]).generate_state(1)[0] % 2**31)


# --- rollouts ---------------------------------------------------------------

class _NoRows:
    """The AV slot of ``closed_loop`` under the WOSAC protocol, where the world drives every row."""

    def reset(self, scene: SceneState, generator: torch.Generator) -> None:
        return None

    def act(self, scene: SceneState, state: None, generator: torch.Generator):
        from simgen.sim.env import hold_action

        return hold_action(scene, torch.zeros_like(scene.meta.is_av)), None


@dataclass(frozen=True)
class _Job:
    """One scene (or trip) of one world: picklable, for the process pool."""

    log_dir: Path
    kind: Kind
    item: int  # index into the LOG_DIR's scenes or trips (= its id)
    world: str
    av: str | None
    rollouts: int
    seed: int
    device: str = "cpu"  # where world-model networks run


@functools.lru_cache(maxsize=4)
def _open_logs(log_dir: Path):
    """The LOG_DIR and its RoadMap, loaded once per process."""
    logs = load_logs(log_dir)
    return logs, logs.roadmap()


def _context(job: _Job, log: SceneState, roadmap: RoadMap, role: str):
    """The actors' context for one scene or trip (its seed is set per rollout)."""
    from simgen.agents import PolicyContext
    from simgen.agents.sumo_branch import BranchPoint

    logs, _ = _open_logs(job.log_dir)
    entry = logs.index[job.kind][job.item]
    sumo_ids = tuple(str(s) for s in read_npz(logs.root / entry["file"])["agent/sumo_id"])
    point = BranchPoint(net_file=logs.root / "net.net.xml", state_file=logs.root / entry["state_file"],
                        sumo_ids=sumo_ids, speed_factor_dev=float(logs.index["demand"]["speed_factor_dev"]))
    return PolicyContext(roadmap=roadmap, role=role, log=log, reference=point,
                         route_lanes=_av_route(roadmap, log, point) if role == "world" else None,
                         radius_m=float(logs.index["radius_m"]))


def _av_route(roadmap: RoadMap, log: SceneState, point) -> torch.Tensor | None:
    """The AV's lane path along its SUMO route in the saved state (for route-following AV policies such as
    ``idm_route``); None where the state has no route for it or the AV is not on its lanes (such a policy then
    refuses with its own message)."""
    import xml.etree.ElementTree as ET

    from simgen.sim.rollout import route_lanes_for

    root = ET.parse(point.state_file).getroot()
    vehicle = root.find(f"vehicle[@id='{point.sumo_ids[log.av_index]}']")
    route = None if vehicle is None else root.find(f"route[@id='{vehicle.get('route')}']")
    if route is None:
        return None
    try:
        return route_lanes_for(roadmap, log, route.get("edges", "").split())
    except ValueError:
        return None


def roll_out(log_dir: str | Path, item: int, world: str, *, rollouts: int = 32, seed: int = 0,
             av: str | None = None, kind: Kind = "scenes", device: str = "cpu") -> tuple[SceneState, list[SceneState]]:
    """The logged scene window (or trip) ``item`` of ``log_dir`` and its rollouts, as ``evaluate`` makes them."""
    return _roll_out(_Job(Path(log_dir), kind, item, world, av, rollouts, seed, device))


def _roll_out(job: _Job) -> tuple[SceneState, list[SceneState]]:
    """The logged scene or trip and its ``job.rollouts`` rollouts (module docstring, "Protocol")."""
    from simgen.agents import WORLDS, make_policy
    from simgen.sim.rollout import closed_loop, mask_future

    logs, roadmap = _open_logs(job.log_dir)
    log = logs.scene(job.item) if job.kind == "scenes" else logs.trip(job.item)
    name, options = world_spec(job.world)
    if name == "world_model":
        options = {**options, "device": job.device}
    av_name = job.av if job.kind == "scenes" else job.av or TRIP_AV
    ctx = _context(job, log, roadmap, "all" if av_name is None else "world")
    start = mask_future(log)
    steps = log.num_steps - 1 - log.step
    if av_name is None and hasattr(WORLDS.get(name), "rollouts"):  # batched: all rollouts at once
        seed = rollout_seed(job.seed, job.kind, job.item, 0)
        world = make_policy(name, replace(ctx, seed=seed), **options)
        return log, world.rollouts(start, job.rollouts, steps, torch.Generator().manual_seed(seed))
    rollouts = []
    for r in range(job.rollouts):
        seed = rollout_seed(job.seed, job.kind, job.item, r)
        world_ctx = replace(ctx, seed=seed)
        world = make_policy(name, world_ctx, **options)
        av = _NoRows() if av_name is None else make_policy(av_name, replace(world_ctx, role="av"))
        generator = torch.Generator().manual_seed(seed)
        rollouts.append(closed_loop(start, av, world, steps, generator))
    return log, rollouts


def _stack(items: Sequence[Any]) -> Any:
    """Stack tensor dataclasses (``AgentTrajectory``, ``TrafficLights``) along a new leading rollout axis."""
    cls = type(items[0])
    return cls(**{f: torch.stack([getattr(x, f) for x in items]) for f in cls.tensor_fields()})


def _score_scene(job: _Job) -> dict[str, Any]:
    """Roll out one scene and score it: the report's ``per_scene`` entry (plus ``histograms``)."""
    from simgen.metrics.wosac import score_scene

    tic = time.perf_counter()
    log, rollouts = _roll_out(job)
    rolled = time.perf_counter()
    _, roadmap = _open_logs(job.log_dir)
    sim_traj = _stack([r.traj for r in rollouts])  # [R, A, T]
    sim_lights = _stack([r.lights for r in rollouts])  # [R, S, T]
    score = score_scene(roadmap, log, sim_traj, sim_lights=sim_lights)
    histograms = _feature_histograms(roadmap, log, sim_traj, sim_lights)
    done = time.perf_counter()
    return {"scene": job.item, "meta_metric": score.meta_metric, "likelihoods": dict(score.likelihoods),
            "min_ade": score.min_ade, "rates": dict(score.rates), "num_agents": score.num_agents,
            "seconds": {"rollouts": rolled - tic, "score": done - rolled, "total": done - tic},
            "histograms": histograms}


def _feature_histograms(roadmap: RoadMap, log: SceneState, sim_traj, sim_lights) -> dict[str, dict[str, list]]:
    """Per WOSAC feature, counts of the log's and the rollouts' values over the evaluated agents in the config's
    bins: the entries ``score_scene`` scores for the log and pools for the sim (undefined values left out).
    Bernoulli features count agents (for the sim, agent-rollouts) without and with the event."""
    from simgen.metrics.features import scene_features
    from simgen.metrics.wosac import WOSAC_2025, scoring_masks

    history = log.step + 1
    active = (log.traj.valid.any(-1) | sim_traj.valid.any(-1).any(0)).nonzero()[:, 0]  # rows anyone may meet
    meta = log.meta.index_axis("A", active)
    log_traj = log.traj.index_axis("A", active)
    evaluated = log_traj.valid[:, log.step]  # [A'] bool
    log_f = scene_features(roadmap, log_traj.map_tensors(lambda t, _axes: t[None]), meta, log.lights,
                           history_steps=history)
    sim_f = scene_features(roadmap, sim_traj.index_axis("A", active), meta, sim_lights, history_steps=history)
    masks = scoring_masks(log_traj.valid[evaluated, history:], meta.agent_type[evaluated] == AgentType.VEHICLE)
    sim_valid = sim_traj.valid[:, active][:, evaluated, history:]  # [R, E, F]
    counts = {}
    for spec in WOSAC_2025.features:
        log_values, sim_values = log_f[spec.name][0, evaluated], sim_f[spec.name][:, evaluated]
        if spec.estimator == "histogram":
            counts[spec.name] = {"log": _value_counts(log_values[masks[spec.name]], spec),
                                 "sim": _value_counts(sim_values[sim_valid], spec)}
        else:
            counts[spec.name] = {"log": _event_counts(log_values, masks[spec.name]),
                                 "sim": _event_counts(sim_values, masks[spec.name])}
    return counts


def _value_counts(values: torch.Tensor, spec) -> list[int]:
    """Counts of defined ``values`` in the bins of WOSAC feature ``spec`` (clipped into its range)."""
    values = values[~values.isnan()].double().clamp(*spec.value_range)
    return torch.histogram(values, bins=spec.edges()).hist.long().tolist()


def _event_counts(events: torch.Tensor, mask: torch.Tensor) -> list[int]:
    """[without, with] the event at some scored step: ``events`` ``[.., E, F]``, ``mask`` ``[E, F]``."""
    happened = (events & mask).any(-1)
    return [int((~happened).sum()), int(happened.sum())]


def _trip_rollouts(job: _Job) -> tuple[SceneState, list[SceneState], float]:
    """Roll out one trip: (log, rollouts, seconds). Rows never valid are cut from the rollouts (trip metrics
    ignore row identity), which keeps what returns from a pool worker small."""
    tic = time.perf_counter()
    log, rollouts = _roll_out(job)
    return log, [_used_rows(r) for r in rollouts], time.perf_counter() - tic


def _used_rows(state: SceneState) -> SceneState:
    used = state.traj.valid.any(-1)
    return state.replace(traj=state.traj.index_axis("A", used), meta=state.meta.index_axis("A", used))


# --- running jobs -------------------------------------------------------------

def _init_pool_worker() -> None:
    torch.set_num_threads(1)  # one process per core (see _run_jobs)


def _run_jobs(fn: Callable[[_Job], Any], jobs: Sequence[_Job], workers: int, description: str,
              progress: bool) -> list[Any]:
    """``[fn(job) for job in jobs]``, in a spawn process pool when ``workers > 1``, with a progress bar.

    Every job runs with one torch thread: scoring a scene was 6-13x slower with two on a busy 2-core machine
    (as the rule-based actors were, ``simgen.threads``)."""
    from simgen.progress import progress_bar
    from simgen.threads import torch_threads

    results: list[Any] = [None] * len(jobs)
    with progress_bar(description, total=len(jobs), enabled=progress) as advance:
        if workers == 1:
            with torch_threads(1):
                for k, job in enumerate(jobs):
                    results[k] = fn(job)
                    advance()
            return results
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context,
                                 initializer=_init_pool_worker) as pool:
            futures = {pool.submit(fn, job): k for k, job in enumerate(jobs)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    advance()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return results


# --- evaluation ----------------------------------------------------------------

def _check_input(logs, worlds: Sequence[str], av: str | None, rollouts: int, scenes: int | None,
                 trips: bool, workers: int, device: str = "cpu") -> list[int]:
    """Validate the request at the boundary; returns the scene ids to evaluate."""
    from simgen.agents import POLICIES, WORLDS

    known = sorted({*WORLDS, *WORLD_ALIASES})
    for world in worlds:
        base = world_spec(world)[0]
        if base == "world_model":
            checkpoint = world_spec(world)[1].get("checkpoint")
            if checkpoint is not None and not Path(checkpoint).is_file():
                raise EvalError(f"world '{world}': checkpoint {checkpoint} does not exist")
        elif world not in known and ":" not in world:
            raise EvalError(f"unknown world '{world}'; choose one of {', '.join(known)} or module:Class")
    if len(set(worlds)) != len(worlds):
        raise EvalError(f"worlds {list(worlds)}: each world may be listed once")
    if av is not None and av not in POLICIES and ":" not in av:
        raise EvalError(f"unknown AV policy '{av}'; choose one of {', '.join(sorted(POLICIES))} or module:Class")
    if rollouts < 1 or workers < 1:
        raise EvalError(f"rollouts ({rollouts}) and workers ({workers}) must be at least 1")
    from simgen.world.sampler import device_problem

    if problem := device_problem(device):
        raise EvalError(f"--device {device}: {problem}; use --device cpu")
    available = len(logs.scene_entries)
    if available == 0:
        raise EvalError(f"{logs.root}: the logs hold no scene windows; record some with simgen logs --scenes N")
    if scenes is not None and not 1 <= scenes <= available:
        raise EvalError(f"scenes={scenes}: {logs.root} holds {available} scene windows")
    if trips and not logs.trip_entries:
        raise EvalError(f"{logs.root}: the logs hold no trips; record some with simgen logs --trip-seconds 60")
    scene_ids = list(range(available if scenes is None else scenes))
    if any(w in SUMO_WORLDS for w in worlds):
        _check_saved_states(logs, [("scenes", i) for i in scene_ids]
                            + [("trips", i) for i in range(len(logs.trip_entries)) if trips])
    return scene_ids


def _check_saved_states(logs, items: list[tuple[Kind, int]]) -> None:
    """The SUMO worlds continue each scene's saved state: it must exist and hold the scene's people."""
    net = logs.root / "net.net.xml"
    if not net.is_file():
        raise FileNotFoundError(f"{net}: no such file; the SUMO worlds need the logs' network")
    for kind, i in items:
        entry = logs.index[kind][i]
        state = logs.root / entry["state_file"]
        if not state.is_file():
            raise FileNotFoundError(f"{state}: no such file; the SUMO worlds continue the logs' saved states")
        scene = logs.scene(i) if kind == "scenes" else logs.trip(i)
        people = scene.traj.valid[:, scene.step] & (scene.meta.agent_type == AgentType.PEDESTRIAN)
        if people.any() and "<person " not in state.read_text():
            raise EvalError(f"{state}: the saved state holds no persons, but {entry['file']} has people walking; "
                            "these logs were recorded without SUMO's --save-state.transportables, so the SUMO worlds "
                            "cannot continue them (record the logs again, or evaluate other worlds)")


def _protocol(av: str | None, rollouts: int, radius_m: float) -> dict[str, Any]:
    if av is None:
        mode, text = "wosac", (
            "WOSAC: the world drives every agent valid at the last history step, the AV included (role 'all'); "
            "every such agent is scored")
    else:
        mode, text = "closed_loop", (
            f"closed loop: the AV policy '{av}' drives the AV (role 'av'), the world every other agent (role "
            f"'world': agents beyond {radius_m:g} m of the AV leave the scene); every agent valid at the last "
            "history step is scored, the AV included")
    text += (f"; {rollouts} rollouts of {NUM_FUTURE_STEPS} steps (0.1 s) from the logged "
             f"{NUM_HISTORY_STEPS}-step history; {CONFIG_NAME}")
    return {"mode": mode, "text": text, "config": CONFIG_NAME, "rollouts": rollouts,
            "history_steps": NUM_HISTORY_STEPS, "future_steps": NUM_FUTURE_STEPS}


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values))


def _world_report(world: str, per_scene: list[dict[str, Any]], trip: dict[str, Any] | None,
                  common: dict[str, Any]) -> dict[str, Any]:
    """One world's report from its scored scenes (module docstring, "Report")."""
    histograms = _pooled_histograms([s.pop("histograms") for s in per_scene])
    metas = [s["meta_metric"] for s in per_scene]
    seconds = [s["seconds"]["total"] for s in per_scene]
    return {
        **common, "world": world,
        "meta_metric": _mean(metas), "meta_metric_std": float(np.std(metas)),
        "likelihoods": {k: _mean([s["likelihoods"][k] for s in per_scene]) for k in per_scene[0]["likelihoods"]},
        "min_ade": _mean([s["min_ade"] for s in per_scene]),
        "rates": {k: _mean([s["rates"][k] for s in per_scene]) for k in per_scene[0]["rates"]},
        "per_scene": per_scene, "histograms": histograms, "trip": trip,
        "timing": {**common["timing"], "scene_s_mean": _mean(seconds)},
    }


def _pooled_histograms(per_scene: list[dict[str, dict[str, list]]]) -> dict[str, dict[str, Any]]:
    """Sum the scenes' feature counts; histogram features carry their bin ``edges``."""
    from simgen.metrics.wosac import WOSAC_2025

    pooled = {}
    for spec in WOSAC_2025.features:
        entry: dict[str, Any] = {"estimator": spec.estimator}
        if spec.estimator == "histogram":
            entry["edges"] = spec.edges().tolist()
        for side in ("log", "sim"):
            entry[side] = np.sum([scene[spec.name][side] for scene in per_scene], axis=0).tolist()
        pooled[spec.name] = entry
    return pooled


def _trip_report(logs, roadmap: RoadMap, results: list[tuple[SceneState, list[SceneState], float]],
                 av: str | None, rollouts: int) -> dict[str, Any]:
    """The ``trip`` entry of a report: all rollouts of all trips scored against all logged trips."""
    from simgen.metrics.trip import trip_jsd

    score = trip_jsd(roadmap, [log for log, _, _ in results], [sim for _, sims, _ in results for sim in sims])
    return {"jsd": score.jsd, "composite": score.composite, "trips": [e["id"] for e in logs.trip_entries],
            "rollouts": rollouts, "av": av or TRIP_AV, "seconds": sum(seconds for _, _, seconds in results)}


def logs_with_trips(log_dir: str | Path):
    """``load_logs(log_dir)``, which must hold trips (``simgen rollout --ref-logs`` checks it before simulating)."""
    logs = load_logs(log_dir)
    if not logs.trip_entries:
        raise EvalError(f"{logs.root}: the logs hold no trips; record some with simgen logs --trip-seconds 60")
    return logs


def trip_against_logs(roadmap: RoadMap, trip: SceneState, logs) -> dict[str, Any]:
    """Trip realism of one rollout (``simgen rollout --ref-logs``): its trip JSDs against every logged trip of
    ``logs`` (``logs_with_trips``), which must be recorded on the same map."""
    from simgen.metrics.trip import trip_jsd

    if logs.roadmap().lane_ids != roadmap.lane_ids:
        raise EvalError(f"{logs.root}: logs of map {logs.index.get('map')!r}, not the scenario's map; record them "
                        "with simgen logs --map <the scenario's map> --trip-seconds 60")
    score = trip_jsd(roadmap, [logs.trip(i) for i in range(len(logs.trip_entries))], [trip])
    return {"jsd": score.jsd, "composite": score.composite, "log_dir": str(logs.root),
            "trips": len(logs.trip_entries), "windows_log": score.num_windows_log, "windows_sim": score.num_windows_sim}


def evaluate_worlds(log_dir: str | Path, worlds: Sequence[str], *, rollouts: int = 32, scenes: int | None = None,
                    seed: int = 0, workers: int = 1, av: str | None = None, trips: bool = False,
                    progress: bool = True, device: str = "cpu") -> dict[str, Any]:
    """Evaluate several worlds on the same scenes and compare them (module docstring, "Comparing worlds")."""
    tic = time.perf_counter()
    log_dir = Path(log_dir)
    logs = load_logs(log_dir)
    scene_ids = _check_input(logs, worlds, av, rollouts, scenes, trips, workers, device)
    jobs = [_Job(log_dir, "scenes", i, world, av, rollouts, seed, device) for world in worlds for i in scene_ids]
    scored = _run_jobs(_score_scene, jobs, workers, "eval scenes", progress)
    trip_reports: dict[str, dict[str, Any] | None] = dict.fromkeys(worlds)
    if trips:
        trip_jobs = [_Job(log_dir, "trips", i, world, av, rollouts, seed, device)
                     for world in worlds for i in range(len(logs.trip_entries))]
        rolled = _run_jobs(_trip_rollouts, trip_jobs, workers, "eval trips", progress)
        roadmap = logs.roadmap()
        for world in worlds:
            mine = [result for result, job in zip(rolled, trip_jobs) if job.world == world]
            trip_reports[world] = _trip_report(logs, roadmap, mine, av, rollouts)
    common = {
        "av": av, "protocol": _protocol(av, rollouts, float(logs.index["radius_m"])), "logs": str(log_dir),
        "map": logs.index.get("map", ""), "scenes": scene_ids,
        "seeds": {"seed": seed, "rollout_seed": "SeedSequence([seed, kind (0 scene, 1 trip), id, rollout]) "
                                                "-> 31 bits: torch.Generator and PolicyContext.seed"},
        "versions": version_info(), "timing": {"total_s": time.perf_counter() - tic, "workers": workers,
                                                "device": device},
    }
    reports = {world: _world_report(world, [s for s, job in zip(scored, jobs) if job.world == world],
                                    trip_reports[world], common)
               for world in worlds}
    return {**{k: common[k] for k in ("av", "protocol", "logs", "map", "scenes", "seeds", "versions", "timing")},
            "floor": FLOOR, "ceiling": CEILING, "worlds": compare_worlds(reports), "reports": reports}


def evaluate(log_dir: str | Path, world: str, *, rollouts: int = 32, scenes: int | None = None, seed: int = 0,
             workers: int = 1, av: str | None = None, trips: bool = False, progress: bool = True,
             device: str = "cpu") -> dict[str, Any]:
    """Roll out ``world`` on the first ``scenes`` scene windows of ``log_dir`` (all by default) and score it.

    Returns the report of the module docstring. ``av=None`` follows the WOSAC
    protocol (the world drives every agent); ``av=POLICY`` runs the AV on that
    policy in closed loop. ``trips`` also scores the LOG_DIR's trips.
    """
    table = evaluate_worlds(log_dir, [world], rollouts=rollouts, scenes=scenes, seed=seed, workers=workers, av=av,
                            trips=trips, progress=progress, device=device)
    return table["reports"][world]


def compare_worlds(reports: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per world: absolute meta-metric and the fraction of the gap closed, on means and per scene.

    Gap closed = (world − ``constant_velocity``) / (``log_copies`` − ``constant_velocity``),
    null unless both references are among ``reports`` (evaluated on the same scenes).
    """
    floor, ceiling = reports.get(FLOOR), reports.get(CEILING)

    def gap(value: float, low: float | None, high: float | None) -> float | None:
        if low is None or high is None or high == low:
            return None
        return (value - low) / (high - low)

    def scene_values(report: dict[str, Any] | None) -> dict[int, float]:
        return {} if report is None else {s["scene"]: s["meta_metric"] for s in report["per_scene"]}

    low_scene, high_scene = scene_values(floor), scene_values(ceiling)
    table = {}
    for world, report in reports.items():
        table[world] = {
            "meta_metric": report["meta_metric"],
            "gap_closed": gap(report["meta_metric"], floor and floor["meta_metric"],
                              ceiling and ceiling["meta_metric"]),
            "seconds_per_scene": report["timing"]["scene_s_mean"],
            "per_scene": [{"scene": s["scene"], "meta_metric": s["meta_metric"],
                           "gap_closed": gap(s["meta_metric"], low_scene.get(s["scene"]), high_scene.get(s["scene"]))}
                          for s in report["per_scene"]],
        }
    return table


# --- the report folder -----------------------------------------------------------

def write_report(report: dict[str, Any], out: str | Path) -> Path:
    """Write ``report.json``, ``report.md`` and ``histograms.png`` into ``out`` (atomically); returns ``out``.

    ``report`` is what ``evaluate`` (one world) or ``evaluate_worlds`` returns.
    """
    out = Path(out)
    reports = report["reports"] if "reports" in report else {report["world"]: report}
    table = report["worlds"] if "worlds" in report else compare_worlds(reports)
    with atomic_dir(out) as tmp:
        write_json(tmp / "report.json", _json_safe(report))
        (tmp / "report.md").write_text(_markdown(report, reports, table))
        _plot_histograms(reports, tmp / "histograms.png")
    return out


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def _markdown(report: dict[str, Any], reports: dict[str, dict[str, Any]], table: dict[str, dict[str, Any]]) -> str:
    """``report.md``: the scores of every world side by side, per scene, and the trip JSDs."""
    worlds = list(reports)
    first = reports[worlds[0]]
    lines = [f"# simgen eval: {', '.join(worlds)}", "",
             f"Logs `{report['logs']}` (map {report['map']}), scenes {report['scenes']}, seed "
             f"{report['seeds']['seed']}, simgen {report['versions']['simgen']}.", "",
             f"Protocol: {report['protocol']['text']}.", "",
             f"Gap closed = (world − {FLOOR}) / ({CEILING} − {FLOOR}) on the means over the same scenes.", "",
             "## Scores (mean over scenes; likelihoods and meta-metric: higher is more realistic)", ""]
    rows = [["meta-metric", *(_fmt(reports[w]["meta_metric"]) for w in worlds)],
            ["meta-metric, std over scenes", *(_fmt(reports[w]["meta_metric_std"]) for w in worlds)],
            ["gap closed", *(_fmt(table[w]["gap_closed"]) for w in worlds)]]
    rows += [[f"likelihood: {k}", *(_fmt(reports[w]["likelihoods"][k]) for w in worlds)] for k in first["likelihoods"]]
    rows += [["minADE (m)", *(_fmt(reports[w]["min_ade"]) for w in worlds)]]
    rows += [[f"rate: {k}", *(_fmt(reports[w]["rates"][k]) for w in worlds)] for k in first["rates"]]
    rows += [["seconds per scene", *(_fmt(reports[w]["timing"]["scene_s_mean"], 2) for w in worlds)]]
    lines += _md_table(["", *worlds], rows)
    lines += ["## Meta-metric per scene", ""]
    per_scene = {w: {s["scene"]: s for s in table[w]["per_scene"]} for w in worlds}
    lines += _md_table(["scene", *worlds], [[str(i), *(_fmt(per_scene[w][i]["meta_metric"]) for w in worlds)]
                                           for i in report["scenes"]])
    trips = {w: reports[w]["trip"] for w in worlds if reports[w]["trip"] is not None}
    if trips:
        some = next(iter(trips.values()))
        lines += [f"## Trips (Jensen–Shannon divergence to the logged trips; lower is better; AV: {some['av']}, "
                  f"{some['rollouts']} rollouts per trip, trips {some['trips']})", ""]
        rows = [[k, *(_fmt(trips[w]["jsd"][k]) for w in trips)] for k in some["jsd"]]
        rows.append(["composite", *(_fmt(trips[w]["composite"]) for w in trips)])
        lines += _md_table(["feature", *trips], rows)
    return "\n".join(lines)


def _plot_histograms(reports: dict[str, dict[str, Any]], path: Path) -> None:
    """``histograms.png``: per WOSAC feature, the log's distribution (grey) against each world's (lines),
    pooled over all evaluated agents and steps (Bernoulli features: the share of agents with the event)."""
    from matplotlib.figure import Figure

    names = list(next(iter(reports.values()))["histograms"])
    columns = 5
    fig = Figure(figsize=(4.0 * columns, 3.4 * math.ceil(len(names) / columns)), layout="constrained")
    axes = fig.subplots(math.ceil(len(names) / columns), columns, squeeze=False).flatten()
    for ax, name in zip(axes, names):
        first = next(iter(reports.values()))["histograms"][name]
        bernoulli = first["estimator"] == "bernoulli"
        edges = np.arange(3.0) if bernoulli else np.asarray(first["edges"])
        log = np.asarray(first["log"], dtype=float)
        ax.stairs(log / max(log.sum(), 1.0), edges, fill=True, color="0.8", label="log")
        for world, report in reports.items():
            sim = np.asarray(report["histograms"][name]["sim"], dtype=float)
            ax.stairs(sim / max(sim.sum(), 1.0), edges, linewidth=1.5, label=world)
        if bernoulli:
            ax.set_xticks([0.5, 1.5], ["no", "yes"])
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("share")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper")
    fig.suptitle("WOSAC features: log (grey) against the rollouts, pooled over evaluated agents and steps")
    fig.savefig(path, dpi=80)
