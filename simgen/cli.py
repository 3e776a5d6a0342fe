"""The ``simgen`` command line. Each subcommand is a thin wrapper around one library call.

Bad input (a missing file, an unknown key, a wrong type, an unknown map, a
corrupt network) prints one clear line and exits with code 2; nothing is left
half-written in ``--out``.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="simgen: a generative driving simulator.\n\n"
         "Quick start:  simgen rollout scenarios/city.yaml --out outputs/city",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (not a bug): they carry a message naming the file, key and fix."""
    from simgen.io import FormatError
    from simgen.maps import MapError
    from simgen.metrics.evaluate import EvalError
    from simgen.renderers.render import RenderError
    from simgen.renderers.rig import RigError
    from simgen.renderers.splats.dataset import LogError
    from simgen.renderers.splats.model import SceneFormatError
    from simgen.scenario import ScenarioError
    from simgen.traffic.reference import TrafficError
    from simgen.world.sampler import CheckpointError

    return (ScenarioError, MapError, FormatError, EvalError, RenderError, RigError, CheckpointError, LogError,
            TrafficError, SceneFormatError, FileNotFoundError, FileExistsError)


def user_errors(fn):
    """Turn bad input into one message on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except _user_errors() as err:
            console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper


@app.command()
@user_errors
def rollout(
    config: Path = typer.Argument(..., help="scenario YAML, e.g. scenarios/city.yaml"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: outputs/<config name>)"),
    seed: Optional[int] = typer.Option(None, help="override the scenario's seed"),
    steps: Optional[int] = typer.Option(None, help="closed-loop steps at 10 Hz (overrides duration_s)"),
    set_: list[str] = typer.Option([], "--set", help="override any key: --set world=idm --set scene.radius_m=80"),
    video: bool = typer.Option(True, help="render bev.mp4"),
    ref_logs: Optional[Path] = typer.Option(None, help="`simgen logs` folder with trips on the same map: "
                                            "also score the trip's realism against them (trip JSDs)"),
):
    """Simulate a trip: SUMO reference traffic, the AV policy and a world in closed loop, then a BEV video.

    The default scenario drives every other road user and every traffic light with the shipped world model.

    Examples:

      simgen rollout scenarios/city.yaml

      simgen rollout scenarios/city.yaml --ref-logs logs/berlin-trips

      simgen rollout scenarios/city.yaml --set world=idm --steps 300 --out outputs/idm
    """
    from simgen import io, scenario as scenario_mod
    from simgen.sim.rollout import run_scenario

    overrides = list(set_)
    if seed is not None:
        overrides.append(f"seed={seed}")
    if steps is not None:
        overrides.append(f"duration_s={steps / 10}")
    scenario = scenario_mod.load(config, overrides)
    out = out or Path("outputs") / config.stem
    if ref_logs is not None:
        from simgen.metrics.evaluate import logs_with_trips, trip_against_logs

        ref = logs_with_trips(ref_logs)
    tic = time.perf_counter()
    with io.atomic_dir(out) as tmp, tempfile.TemporaryDirectory(prefix="simgen-sumo-") as work:
        result, source, info = run_scenario(scenario, Path(work), progress=True)
        timings = info["timings"]
        io.save_rollout_arrays(result, tmp / "rollout.npz")
        io.save_map(source.roadmap, tmp / "map.npz")
        if video and scenario.outputs.bev_video:
            from simgen.renderers.bev import render_bev_video

            t0 = time.perf_counter()
            render_bev_video(source.roadmap, result.state, tmp / "bev.mp4", route_lanes=result.route_lanes,
                             size=scenario.outputs.video_size, view_radius_m=scenario.outputs.view_radius_m,
                             progress=True)
            timings["render_s"] = time.perf_counter() - t0
        if scenario.sensors is not None:
            from simgen.renderers.render import options_from_scenario, render_state

            t0 = time.perf_counter()
            (tmp / "sensors").mkdir()
            render_state(source.roadmap, result.state, tmp / "sensors", options_from_scenario(scenario),
                         progress=True)
            timings["sensors_s"] = time.perf_counter() - t0
        summary = {
            "seed": scenario.seed, "steps": info["steps"], "dt_s": 0.1, "world": scenario.world,
            "av_policy": scenario.av.policy, "map": scenario.map, "map_attribution": source.attribution,
            "num_agents_max": scenario.scene.num_agents_max,
            "num_agents_seen": int(result.state.traj.valid.any(-1).sum()),
            "agent_steps": info["agent_steps"], "route_edges": info["route_edges"],
            "timings": timings, "wall_time_s": time.perf_counter() - tic, "reference": info["reference"],
            "versions": io.version_info(), "simgen_version": io.version_info()["simgen"],
            "config": scenario.model_dump(by_alias=True), "source_config": str(config),
        }
        io.write_json(tmp / "summary.json", summary)
    if ref_logs is not None:  # after the rollout is saved: a map mismatch loses nothing
        summary["realism"] = trip_against_logs(source.roadmap, result.state, ref)
        io.write_json(out / "summary.json", summary)
    _print_summary(out, summary)


def _print_summary(out: Path, summary: dict) -> None:
    table = Table(title=f"rollout -> {out}", show_header=False)
    for key in ("map", "world", "av_policy", "seed", "steps", "num_agents_seen", "agent_steps"):
        table.add_row(key, str(summary[key]))
    for key, value in summary["timings"].items():
        table.add_row(key, f"{value:.2f}")
    table.add_row("wall_time_s", f"{summary['wall_time_s']:.2f}")
    if "realism" in summary:
        realism = summary["realism"]
        table.add_row("trip JSD composite (lower is better)", f"{realism['composite']:.3f}")
        for name, value in realism["jsd"].items():
            table.add_row(f"  {name}", f"{value:.3f}")
    Console().print(table)


@app.command()
@user_errors
def logs(
    map_: str = typer.Option(..., "--map", help="generator name (grid|spider|random), bundled map, or file"),
    out: Path = typer.Option(..., help="output folder"),
    scenes: int = typer.Option(16, help="number of 9.1 s scene windows"),
    seed: int = typer.Option(0, help="master seed (each worker run derives its own)"),
    workers: int = typer.Option(1, help="parallel SUMO processes (libsumo runs one per process)"),
    trip_seconds: float = typer.Option(0.0, help="also record trips this long (s); 0 = none"),
):
    """Record reference traffic with SUMO and cut it into scene windows (and trips).

    Example:  simgen logs --map grid --out logs/grid --scenes 64 --workers 2 --trip-seconds 60
    """
    from simgen.traffic import generate_logs

    path = generate_logs(map_, out, scenes=scenes, seed=seed, workers=workers, trip_seconds=trip_seconds)
    Console().print(f"logs written to {path}")


@app.command("map")
@user_errors
def map_cmd(
    map_: str = typer.Argument(..., metavar="MAP", help="generator name (grid|spider|random), bundled map, or file"),
    out: Path = typer.Option(..., help="output folder: map.npz, map.json, net.net.xml, preview.png"),
    seed: int = typer.Option(0, help="seed for generated maps"),
):
    """Import or generate a map and write its arrays and a PNG preview.

    Examples:  simgen map grid --out maps/grid      simgen map berlin --out maps/berlin
    """
    from simgen.maps import export_map

    source = export_map(map_, out, seed=seed)
    Console().print(f"{source.name}: {source.roadmap.num_lanes} lanes, {source.roadmap.num_signals} light slots "
                    f"-> {out}")


@app.command("eval")
@user_errors
def eval_cmd(
    logs_dir: Path = typer.Option(..., "--logs", help="a `simgen logs` folder"),
    world: str = typer.Option(..., help="world to score, or several comma-separated to compare them"),
    out: Path = typer.Option(..., help="output folder: report.json, report.md, histograms.png"),
    rollouts: int = typer.Option(32, help="rollouts per scene window (and per trip)"),
    scenes: Optional[int] = typer.Option(None, help="evaluate the first N scene windows (default: all)"),
    seed: int = typer.Option(0, help="master seed; each rollout's seed derives from (seed, scene, rollout)"),
    workers: int = typer.Option(1, help="parallel processes, one scene at a time each"),
    av: Optional[str] = typer.Option(None, help="drive the AV with this policy, the world the rest (closed loop); "
                                                "default: the world drives every agent (WOSAC)"),
    trips: bool = typer.Option(False, help="also roll out the logs' trips and score the trip-level JSDs"),
    sampler: str = typer.Option("amortized", help="world model sampler: amortized (one denoiser call per step) | "
                                                  "full (K = 16 denoising steps every step)"),
    device: str = typer.Option("cpu", help="where world-model networks run: cpu | cuda (32 rollouts of a scene are "
                                           "one batch; constraints stay on the CPU)"),
):
    """Score worlds for realism on logged scenes: WOSAC 2025 metrics (trip JSDs with --trips).

    Each scene window is rolled out from its 1.1 s history. The world drives
    every agent valid at the last history step, the AV included, and each of
    them is scored. References: constant_velocity (floor), log_copies
    (ceiling), sumo_branch (SUMO with re-drawn speed factors, the oracle).

    With several worlds, report.json holds a "worlds" table (meta-metric, and
    the fraction of the constant_velocity -> log_copies gap closed) and the
    full "reports" per world.

    Examples:

      simgen eval --logs logs/grid --world idm --out outputs/eval-idm

      simgen eval --logs logs/grid --out outputs/eval --workers 2
      --world constant_velocity,idm,sumo_branch,log_copies

      simgen eval --logs logs/grid --world sumo --av idm_route --trips --out av

      simgen eval --logs logs/berlin --world world_model,checkpoints/world/world.pt@full --out wm

    The world model is `world_model` (the shipped checkpoint) or a path to a
    `.pt` checkpoint; `@full` after it (or --sampler full) selects full
    replanning instead of amortized sampling.
    """
    from simgen.metrics.evaluate import SAMPLER_SUFFIX, EvalError, evaluate_worlds, world_spec, write_report

    if sampler not in ("amortized", "full"):
        raise EvalError(f"--sampler must be 'amortized' or 'full', got {sampler!r}")
    worlds = [name.strip() for name in world.split(",") if name.strip()]
    if sampler == "full":
        worlds = [w + SAMPLER_SUFFIX if world_spec(w)[0] == "world_model" and not w.endswith(SAMPLER_SUFFIX)
                  else w for w in worlds]
    table = evaluate_worlds(logs_dir, worlds, rollouts=rollouts, scenes=scenes, seed=seed, workers=workers, av=av,
                            trips=trips, device=device)
    write_report(table if len(worlds) > 1 else table["reports"][worlds[0]], out)
    summary = Table(title=f"eval -> {out}")
    for column in ("world", "meta-metric", "gap closed", "s / scene"):
        summary.add_column(column)
    for name, row in table["worlds"].items():
        gap = "–" if row["gap_closed"] is None else f"{row['gap_closed']:.3f}"
        summary.add_row(name, f"{row['meta_metric']:.3f}", gap, f"{row['seconds_per_scene']:.2f}")
    Console().print(summary)


@app.command()
@user_errors
def render(
    rollout_dir: Path = typer.Argument(..., help="a `simgen rollout` output folder"),
    out: Path = typer.Option(..., help="output folder: frames/NNNNN/..., sensors.mp4, summary.json"),
    sensors: str = typer.Option("lidar,cameras", help="comma-separated: lidar, cameras"),
    weather: str = typer.Option("clear", help="clear | rain | fog"),
    time_of_day: str = typer.Option("12:00", help="local solar time HH:MM (night from about 21:00 to 04:00)"),
    frames: str = typer.Option(":", help="steps A:B of the rollout (end excluded), A:, :B, or one step K"),
    workers: int = typer.Option(1, help="parallel processes, one frame at a time each"),
    rig: str = typer.Option("default", help="sensor rig: a bundled name or a rig YAML (see scenarios/README.md)"),
    seed: int = typer.Option(0, help="seeds lidar ray drop and noise and rain streaks"),
    backend: str = typer.Option("raytrace", help="raytrace (the 3D street) | splats (a `simgen reconstruct` scene)"),
    scene: Optional[Path] = typer.Option(None, help="splats: the `simgen reconstruct` output folder"),
    shift_lateral: float = typer.Option(0.0, help="splats: move the sensors this far to the AV's left (m; "
                                                  "negative: right), a novel lane"),
):
    """Render lidar range images and point clouds and surround-camera images for a rollout.

    Per frame: camera PNGs, depth/semantic/instance arrays, intrinsics and poses, lidar range image and
    points, actor boxes with instance ids, and a contact sheet; plus sensors.mp4 and summary.json
    (layout in docs/FORMATS.md).

    Examples:

      simgen render outputs/grid --out outputs/grid-sensors --frames 0:50 --workers 2

      simgen render outputs/grid --out outputs/grid-night --weather rain --time-of-day 22:00 --sensors cameras

    Through a reconstruction (actors moved to the rollout's boxes, new agents from its actor library), from a
    lane 3 m to the left, or from a dashcam:

      simgen render outputs/city --backend splats --scene outputs/city-recon --out outputs/city-splats

      simgen render outputs/city --backend splats --scene outputs/city-recon --shift-lateral 3 --out shifted

      simgen render outputs/city --backend splats --scene outputs/city-recon --rig dashcam --out dashcam
    """
    from simgen.renderers.render import RenderError, RenderOptions, render_rollout

    sensor_names = tuple(s.strip() for s in sensors.split(",") if s.strip())
    if backend == "splats":
        from simgen.renderers.splats.replay import SplatRenderOptions, render_rollout_splats

        if scene is None:
            raise RenderError("--backend splats needs --scene DIR (a `simgen reconstruct` output)")
        if weather != "clear" or time_of_day != "12:00":
            raise RenderError("--weather and --time-of-day apply to --backend raytrace only; a splat scene keeps "
                              "the light it was recorded in")
        summary = render_rollout_splats(rollout_dir, out, SplatRenderOptions(
            scene=str(scene), sensors=sensor_names, frames=frames, rig=rig, shift_lateral_m=shift_lateral),
            progress=True)
        Console().print(f"{summary['num_frames']} frames -> {out} ({summary['timings']['frames_per_s']:.2f} "
                        f"frames/s, splats)")
        return
    if backend != "raytrace" or scene is not None or shift_lateral:
        raise RenderError(f"--backend {backend}: choose raytrace or splats (--scene and --shift-lateral need "
                          "splats)")

    options = RenderOptions(sensors=sensor_names, weather=weather,
                            time_of_day=time_of_day, frames=frames, workers=workers, rig=rig, seed=seed)
    summary = render_rollout(rollout_dir, out, options, progress=True)
    timings = summary["timings"]
    Console().print(f"{summary['num_frames']} frames -> {out} ({timings['frames_per_s']:.2f} frames/s, "
                    f"{summary['workers']} workers)")


@app.command()
@user_errors
def reconstruct(
    log_dir: Path = typer.Argument(..., help="a `simgen render` output or a log in the plain layout (docs/FORMATS.md)"),
    out: Path = typer.Option(..., help="output folder: gaussians.npz, scene.json, scene.ply, summary.json, "
                                       "comparisons/, checkpoint.pt"),
    iterations: int = typer.Option(1500, help="optimizer steps in all (a resumed run continues to this count)"),
    resolution: str = typer.Option("160x106", help="WxH the images are resampled to, or 'native'"),
    holdout_camera: Optional[str] = typer.Option(None, help="also hold out every frame of this camera "
                                                            "(extrapolation figures, no target)"),
    resume: bool = typer.Option(False, help="continue from OUT/checkpoint.pt"),
    seed: int = typer.Option(0, help="seeds initialization, view order and densification"),
    threads: int = typer.Option(1, help="torch CPU threads"),
    device: str = typer.Option("cpu", help="cpu | cuda (on CUDA the rasterizer is gsplat)"),
):
    """Fit static and per-actor Gaussians (4D splat scene) to a multi-view camera + lidar log.

    Holds out every 8th frame on all cameras and reports PSNR, SSIM and lidar depth error on them in
    summary.json, with the protocol; comparisons/ shows render | truth | error for a few held-out views.

    Examples:

      simgen render outputs/city --out outputs/city-sensors --frames 10:30

      simgen reconstruct outputs/city-sensors --out outputs/city-recon --iterations 1500

      simgen reconstruct outputs/city-sensors --out outputs/city-recon --holdout-camera side_left --resume

      simgen render outputs/city --backend splats --scene outputs/city-recon --out outputs/city-splats
    """
    from simgen.renderers.splats.dataset import LogError
    from simgen.renderers.splats.reconstruct import ReconstructConfig, reconstruct as run

    size = None
    if resolution != "native":
        try:
            width, height = (int(v) for v in resolution.lower().split("x"))
        except ValueError:
            raise LogError(f"--resolution {resolution}: expected WxH in px (e.g. 160x106) or 'native'") from None
        size = (width, height)
    config = ReconstructConfig(iterations=iterations, resolution=size, holdout_camera=holdout_camera, seed=seed,
                               threads=threads, device=device)
    summary = run(log_dir, out, config, resume=resume, progress=True)
    table = Table(title=f"reconstruct -> {out}", show_header=False)
    for key in ("psnr_heldout", "ssim_heldout", "depth_abs_rel_heldout", "depth_l1_m_heldout", "num_gaussians",
                "iterations_per_s", "wall_time_s"):
        value = summary[key]
        table.add_row(key, "-" if value is None else str(value) if isinstance(value, int) else f"{value:.4g}")
    if summary["heldout_camera"]:
        table.add_row(f"psnr camera {holdout_camera}", f"{summary['heldout_camera']['psnr']:.4g}")
    Console().print(table)


train_app = typer.Typer(help="Train the world model: record a corpus, train, export a checkpoint.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("corpus")
@user_errors
def train_corpus(
    out: Path = typer.Option(..., help="corpus folder: one `simgen logs` folder per training map"),
    workers: int = typer.Option(2, help="parallel SUMO processes per map"),
):
    """Record the world model's training corpus (generated maps and braunschweig; berlin and ingolstadt are
    held out). About 20 minutes on 2 cores; finished maps are skipped, so it resumes.

    Example:  simgen train corpus --out data/world-corpus
    """
    from simgen.world.corpus import build_corpus

    dirs = build_corpus(out, workers=workers)
    Console().print(f"{len(dirs)} log folders in {out}")


@train_app.command("world")
@user_errors
def train_world_cmd(
    out: Path = typer.Option(..., help="run folder: best.ckpt, last.ckpt, train.json, lightning_logs/"),
    corpus: Path = typer.Option(None, help="a `simgen train corpus` folder (every log folder in it)"),
    logs: str = typer.Option("", help="comma-separated `simgen logs` folders (instead of --corpus)"),
    steps: int = typer.Option(6000, help="optimizer steps in all (a resumed run continues to this count)"),
    batch: int = typer.Option(32, help="clips per step"),
    seed: int = typer.Option(0, help="seed for initialization, batches and noise"),
    lr: float = typer.Option(6e-4, help="peak learning rate (AdamW; warm-up, then cosine decay to 0 at --steps)"),
    resume: bool = typer.Option(True, help="continue from OUT/last.ckpt when it exists (the decay is re-planned "
                                           "for this run's --steps and --lr)"),
    init: Path = typer.Option(None, help="start a new run from this world.pt's weights (fine-tuning; inputs "
                                         "added since start at 0)"),
    workers: int = typer.Option(0, help="processes making batches (0: the training process; on a GPU machine, "
                                        "about one per CPU core)"),
    val_every: int = typer.Option(500, help="optimizer steps between validations and checkpoints"),
    snapshots: bool = typer.Option(False, help="also keep OUT/step=N.ckpt at every validation"),
    max_minutes: float = typer.Option(None, help="end within this many minutes: fewer steps than --steps if "
                                                 "need be, the learning-rate decay fitted to them"),
):
    """Train the SceneDiffuser++ world model (checkpoints every validation, resumable).

    Examples:

      simgen train world --corpus data/world-corpus --out runs/world --steps 6000

      simgen train export runs/world/last.ckpt --out checkpoints/world/world.pt

      simgen train world --corpus data/world-corpus --out runs/world-ft --init checkpoints/world/world.pt --steps 2000

      simgen train world --corpus data/world-corpus --out runs/world-gpu --batch 256 --workers 14 --snapshots
    """
    from simgen.world.train import train_world

    dirs = [Path(d) for d in logs.split(",") if d] if logs else []
    if corpus is not None:
        dirs += sorted(p for p in Path(corpus).iterdir() if (p / "logs.json").exists())
    if not dirs:
        raise FileNotFoundError("train world: give --corpus DIR (from `simgen train corpus`) or --logs DIR[,DIR]")
    if init is not None and not init.is_file():
        raise FileNotFoundError(f"train world --init {init}: no such file; give a world.pt from `simgen train export`")
    best = train_world(dirs, out, steps=steps, batch_size=batch, seed=seed, lr=lr, resume=resume, init=init,
                       workers=workers, val_every=val_every, snapshots=snapshots, max_minutes=max_minutes)
    Console().print(f"best checkpoint: {best}")


@train_app.command("export")
@user_errors
def train_export(
    ckpt: Path = typer.Argument(..., help="a Lightning checkpoint from `simgen train world`"),
    out: Path = typer.Option(Path("checkpoints/world/world.pt"), help="weights file to write (+ .sha256 beside)"),
):
    """Export a training checkpoint as a small weights file with its SHA-256 (verified when loaded)."""
    from simgen.world.train import export_checkpoint

    if not ckpt.is_file():
        raise FileNotFoundError(f"train export: {ckpt} does not exist")
    digest = export_checkpoint(ckpt, out)
    Console().print(f"{out} ({out.stat().st_size / 1e6:.1f} MB), sha256 {digest}")


def main() -> None:  # pragma: no cover
    sys.exit(app())
