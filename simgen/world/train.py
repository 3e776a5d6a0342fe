"""Training the world model (Lightning): mixed tasks through noise levels and inpainting masks.

``corrupt`` turns a clean batch (``simgen.world.data``) into the denoiser's
input and its v-prediction targets. Per example it draws one task:

| task | share | noise levels τ (future frames) | given |
|---|---|---|---|
| uniform | 0.35 | one τ ~ U(0, 1] for the window | context frames |
| amortized | 0.40 | rising: frame k of W gets ``((k - 1 + u) / W)³`` (``staircase``), u ~ U(0, 1] | context frames |
| per-frame | 0.15 | independent U(0, 1], sorted to rise | context frames |
| initialize | 0.10 | one τ for *every* frame, context included; positions unanchored | random agents (p 0.2) |

(The shipped weights were trained with the square, ``((k - 1 + u) / W)²``.)

On top, the AV's whole clip is given with probability 0.25 (inpainting the
AV's plan) and the lights' whole clip with probability 0.2 (SUMO's signal
programs driving the lights). Given tokens enter clean (``agent_clean``) and
are not supervised.

Loss (SceneDiffuser++): the validity channel is supervised at every
non-given token of a real slot; the other agent channels only where the
agent is valid; light states where the slot's state is known. MSE on v.
The validity channel's MSE is added again with weight ``VALIDITY_WEIGHT``: an
existing agent's validity must follow its context (agents rarely leave within
1.6 s), not the noisy sample, or sampling drops agents whose initial noise
points the other way.

    simgen train world --corpus data/world-corpus --out runs/world --steps 20000
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from simgen.world.data import ClipDataset, SizedBatches, collate
from simgen.world.denoiser import Denoiser, DenoiserConfig, DenoiserInput
from simgen.world.diffusion import add_noise, staircase, v_target
from simgen.world.tokenizer import DELTA_SCALE_M, HISTORY_OFFSETS, VALID, X, Y, condition_reference, sigma_data

TASK_SHARES = {"uniform": 0.35, "amortized": 0.40, "per_frame": 0.15, "initialize": 0.10}
AV_GIVEN_P = 0.25
LIGHTS_GIVEN_P = 0.2
AGENT_GIVEN_P = 0.2  # in the initialize task
DEFAULT_FUTURE = 16  # W: future frames in the window (1.6 s)
VALIDITY_WEIGHT = 3.0  # extra weight of the validity channel's v-MSE (module docstring)


def frame_offsets(future: int) -> torch.Tensor:
    return torch.tensor([*HISTORY_OFFSETS, *range(1, future + 1)])


def noise_levels(batch_size: int, future: int, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example task (index into ``TASK_SHARES``) ``[B]`` and frame levels ``[B, H + W]`` (table above)."""
    H = len(HISTORY_OFFSETS)
    shares = torch.tensor(list(TASK_SHARES.values()))
    task = torch.multinomial(shares, batch_size, replacement=True, generator=generator)
    u = 1 - torch.rand(batch_size, 1, generator=generator)  # (0, 1]
    uniform = u.expand(batch_size, future)
    rising = staircase(future, u)
    per_frame = (1 - torch.rand(batch_size, future, generator=generator)).sort(-1).values
    future_levels = torch.stack([uniform, rising, per_frame, uniform])[task, torch.arange(batch_size)]
    context = torch.where(task[:, None] == 3, u, 0.0).expand(batch_size, H)
    return task, torch.cat([context, future_levels], dim=1)


def corrupt(batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
            ) -> tuple[DenoiserInput, dict[str, torch.Tensor]]:
    """Clean batch -> (denoiser input, targets and loss masks). See the module docstring."""
    agents, lights = batch["agents"], batch["lights"]
    B, A, T, _ = agents.shape
    H = len(HISTORY_OFFSETS)
    device = agents.device
    # Random draws are made on the CPU (``generator`` is a CPU generator) and moved: a batch on a GPU gets
    # the same task, masks and noise as on the CPU.
    task, level = (x.to(device) for x in noise_levels(B, T - H, generator))
    offsets = frame_offsets(T - H).to(device)
    initialize = task == 3
    context = torch.arange(T, device=device) < H  # [T]
    given_frames = context[None] & ~initialize[:, None]  # [B, T]
    av_given = (torch.rand(B, generator=generator) < AV_GIVEN_P).to(device)
    agent_given = (given_frames[:, None] | (batch["is_av"] & av_given[:, None])[..., None]
                   | ((torch.rand(B, A, generator=generator) < AGENT_GIVEN_P).to(device)
                      & initialize[:, None])[..., None])
    agent_given = agent_given & batch["agent_mask"][..., None]
    lights_given = (torch.rand(B, generator=generator) < LIGHTS_GIVEN_P).to(device)
    light_given = (given_frames | lights_given[:, None])[:, None].expand(-1, lights.shape[1], -1)
    light_given = light_given & batch["light_mask"][..., None]

    agent_cond = batch["agent_cond"]
    if initialize.any():  # nothing is known when a scene is generated: positions become unanchored
        ref = condition_reference(agent_cond, offsets)  # [B, A, T, 2] m
        valid = agents[..., VALID] > 0
        absolute = agents[..., X:Y + 1] + ref / DELTA_SCALE_M
        moved = initialize[:, None, None, None] & valid[..., None]
        agents = agents.clone()
        agents[..., X:Y + 1] = torch.where(moved, absolute, agents[..., X:Y + 1])
        agent_cond = torch.where(initialize[:, None, None], 0.0, agent_cond)
    agent_noise = torch.randn(agents.shape, generator=generator).to(device)
    light_noise = torch.randn(lights.shape, generator=generator).to(device)
    inp = DenoiserInput(
        agents=add_noise(agents, agent_noise, level), agent_given=agent_given, agent_clean=agents,
        agent_mask=batch["agent_mask"], is_av=batch["is_av"], agent_cond=agent_cond,
        lights=add_noise(lights, light_noise, level), light_given=light_given, light_clean=lights,
        light_cond=batch["light_cond"], light_valid=batch["light_valid"], light_mask=batch["light_mask"],
        map_features=batch["map_features"], map_valid=batch["map_valid"], noise_level=level,
        frame_offsets=offsets)
    noisy = (level > 0)[:, None]  # [B, 1, T]
    agent_loss = batch["agent_mask"][..., None] & ~agent_given & noisy  # [B, A, T]
    channel_mask = agent_loss[..., None].expand(*agent_loss.shape, agents.shape[-1]).clone()
    channel_mask[..., VALID + 1:] &= (agents[..., VALID] > 0)[..., None]
    targets = {
        "agents": v_target(agents, agent_noise, level, sigma_data(agent_cond, offsets)),
        "agent_loss": channel_mask,
        "lights": v_target(lights, light_noise, level),
        "light_loss": batch["light_mask"][..., None] & ~light_given & noisy & batch["light_valid"],
    }
    return inp, targets


def loss_terms(denoiser: Denoiser, batch: dict[str, torch.Tensor],
               generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """``{"loss", "agents", "validity", "lights"}``: masked MSE on v (module docstring)."""
    inp, tgt = corrupt(batch, generator)
    agent_v, light_v = denoiser(inp)
    err = (agent_v - tgt["agents"]).square()
    mask = tgt["agent_loss"]
    agent_loss = (err * mask).sum() / mask.sum().clamp_min(1)
    validity = (err[..., VALID] * mask[..., VALID]).sum() / mask[..., VALID].sum().clamp_min(1)
    light_mask = tgt["light_loss"][..., None].expand_as(light_v)
    light_loss = ((light_v - tgt["lights"]).square() * light_mask).sum() / light_mask.sum().clamp_min(1)
    return {"loss": agent_loss + VALIDITY_WEIGHT * validity + 0.5 * light_loss, "agents": agent_loss,
            "validity": validity, "lights": light_loss}


def lr_factor(step: int, total_steps: int, warmup: float = 0.02) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` of the run, then cosine decay to 0 at
    ``total_steps``. It is a function of the step alone, so a run resumed with more ``--steps`` re-plans
    the remaining decay."""
    ramp = max(1, round(warmup * total_steps))
    if step < ramp:
        return (step + 1) / ramp
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - ramp) / max(1, total_steps - ramp))))


class WorldModule(L.LightningModule):
    """The denoiser with its loss and AdamW + cosine decay; checkpoints hold ``config`` and ``future``."""

    def __init__(self, config: dict, future: int, lr: float, total_steps: int):
        super().__init__()
        self.save_hyperparameters()
        self.denoiser = Denoiser(DenoiserConfig(**config))

    def training_step(self, batch: dict[str, torch.Tensor], _index: int) -> torch.Tensor:
        terms = loss_terms(self.denoiser, batch)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=True, batch_size=len(batch["agents"]))
        return terms["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], index: int) -> None:
        terms = loss_terms(self.denoiser, batch, torch.Generator().manual_seed(index))
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=len(batch["agents"]))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, self.hparams.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Resuming: the schedule follows this run's ``total_steps`` (``lr_factor``), not the saved run's."""
        for state in checkpoint.get("lr_schedulers", []):
            for key in [k for k in state if k not in ("last_epoch", "_step_count", "_last_lr")]:
                del state[key]
            state["base_lrs"] = [self.hparams.lr]
            state["lr_lambdas"] = [None]
        for group in checkpoint.get("optimizer_states", [{}])[0].get("param_groups", []):
            group["initial_lr"] = self.hparams.lr
            group["betas"] = (0.9, 0.999)  # OneCycleLR (older checkpoints) cycled them


class TimeBudget(Callback):
    """Fits this run (resumed or not) into ``minutes``. Every ``every`` steps it projects the steps that 97 % of
    the time allows at the rate of the last ``every`` steps and, if fewer than planned, ends the run there, with
    the cosine decay re-planned to reach 0 at that step (``lr_factor`` reads ``total_steps`` at each step). At
    the deadline itself it stops the run whatever the step."""

    def __init__(self, minutes: float, every: int = 100):
        start = time.perf_counter()
        self.deadline = start + 60 * minutes
        self.target = start + 0.97 * 60 * minutes  # the rest is for the last validation and checkpoint
        self.every = every
        self.last: tuple[int, float] | None = None
        self.planned: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *_args) -> None:
        step, now = trainer.global_step, time.perf_counter()
        if now >= self.deadline:
            trainer.should_stop = True
        if step % self.every:
            return
        self.planned = self.planned or module.hparams.total_steps
        if self.last is not None and step > self.last[0]:
            rate = (step - self.last[0]) / (now - self.last[1])
            total = min(self.planned, step + int(rate * max(0.0, self.target - now)))
            module.hparams.total_steps = total
            trainer.fit_loop.epoch_loop.max_steps = total
        self.last = (step, now)


def warm_start(denoiser: Denoiser, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy a saved denoiser's weights ``state`` into ``denoiser``. Weights of equal shape are copied; a weight
    whose inputs grew (new input features appended, e.g. a wider agent condition) keeps the old columns and
    starts the new ones at 0, so the network begins as the old one. Returns the names of the grown weights."""
    grown = []
    own = denoiser.state_dict()
    for name, value in own.items():
        old = state.get(name)
        if old is None:
            raise ValueError(f"warm start: the saved denoiser has no {name!r}; it is a different architecture")
        if old.shape == value.shape:
            value.copy_(old)
        elif old.ndim == 2 and old.shape[0] == value.shape[0] and old.shape[1] < value.shape[1]:
            value.zero_()
            value[:, :old.shape[1]] = old
            grown.append(name)
        else:
            raise ValueError(f"warm start: {name} is {tuple(old.shape)} in the saved denoiser and "
                             f"{tuple(value.shape)} here; only appended inputs can be carried over")
    return grown


def train_world(log_dirs: list[Path], out: Path, *, steps: int, batch_size: int = 32, future: int = DEFAULT_FUTURE,
                config: DenoiserConfig | None = None, lr: float = 6e-4, seed: int = 0,
                val_every: int = 500, resume: bool = True, progress: bool = True, init: Path | None = None,
                workers: int = 0, snapshots: bool = False, max_minutes: float | None = None) -> Path:
    """Train (or resume) a world model on ``log_dirs``; checkpoints in ``out``. Returns the best checkpoint.

    ``init``: a ``world.pt`` whose weights (``warm_start``) and denoiser config start a new run (ignored when
    the run resumes from ``out/last.ckpt``). ``workers``: processes making batches (0: the training process).
    ``snapshots``: also keep ``out/step=N.ckpt`` at every validation. ``max_minutes``: end the run within this
    time, its learning-rate decay fitted to the steps it can make (``TimeBudget``)."""
    saved = None
    if init is not None:
        saved = torch.load(init, map_location="cpu", weights_only=True)
        config = DenoiserConfig(**json.loads(saved["config"])["denoiser"])
    config = config or DenoiserConfig()
    L.seed_everything(seed, workers=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_set = ClipDataset(log_dirs, future, "train")
    val_set = ClipDataset(log_dirs, future, "val")
    parallel = {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": torch.cuda.is_available()}
    loader = torch.utils.data.DataLoader(SizedBatches(train_set, batch_size, seed=seed), batch_size=None, **parallel)
    val_loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(val_set, torch.randperm(len(val_set), generator=torch.Generator().manual_seed(1))
                                [:8 * batch_size].tolist()),
        batch_size=batch_size, collate_fn=collate, **parallel)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matrix products (Ampere and later)
    module = WorldModule(config=asdict(config), future=future, lr=lr, total_steps=steps)
    last = out / "last.ckpt"
    resume = resume and last.exists()
    if saved is not None and not resume:
        warm_start(module.denoiser, saved["state_dict"])
    best = ModelCheckpoint(dirpath=out, filename="best", monitor="val/loss")
    # by optimizer step, so a resumed run keeps saving even where Lightning's validation counter drifts
    latest = ModelCheckpoint(dirpath=out, filename="{step}" if snapshots else "last", every_n_train_steps=val_every,
                             enable_version_counter=False, save_top_k=-1 if snapshots else 1, save_last=snapshots)
    trainer = L.Trainer(max_steps=steps, accelerator="auto", devices=1, val_check_interval=val_every,
                        check_val_every_n_epoch=None, default_root_dir=out,
                        callbacks=[best, latest] + ([] if max_minutes is None else [TimeBudget(max_minutes)]),
                        enable_progress_bar=progress, log_every_n_steps=50, num_sanity_val_steps=0,
                        gradient_clip_val=1.0)
    tic = time.perf_counter()
    trainer.fit(module, loader, val_loader, ckpt_path=str(last) if resume else None)
    trainer.save_checkpoint(last)  # the final step too, not only every ``val_every``
    info = {"log_dirs": [str(d) for d in log_dirs], "train_clips": len(train_set), "val_clips": len(val_set),
            "steps": steps, "batch_size": batch_size, "future": future, "config": asdict(config), "lr": lr,
            "init": None if init is None else str(init),
            "seed": seed, "workers": workers, "device": str(trainer.strategy.root_device), "max_minutes": max_minutes,
            "steps_done": trainer.global_step,
            "wall_s_this_run": time.perf_counter() - tic, "best": str(best.best_model_path),
            "best_val_loss": float(best.best_model_score) if best.best_model_score is not None else None}
    (out / "train.json").write_text(json.dumps(info, indent=2))
    return Path(best.best_model_path or last)


def export_checkpoint(ckpt: str | Path, out: str | Path) -> str:
    """A Lightning checkpoint -> ``out`` (``world.pt``: denoiser weights and config, no optimizer state) and
    ``out`` with suffix ``.sha256``. Returns the SHA-256 of ``out``."""
    import hashlib
    import io

    module = WorldModule.load_from_checkpoint(str(ckpt), map_location="cpu")
    config = {"denoiser": module.hparams.config, "future": module.hparams.future}
    buffer = io.BytesIO()
    state = {k: v.contiguous() for k, v in module.denoiser.state_dict().items()}
    torch.save({"config": json.dumps(config, sort_keys=True), "state_dict": state}, buffer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(buffer.getvalue()).hexdigest()
    out.with_suffix(".sha256").write_text(f"{digest}  {out.name}\n")
    return digest
