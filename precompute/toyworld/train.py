"""Train the toy CLIP models (toy-s, toy-m, toy-l) on the toy world; export and evaluate them with ``models``.

Recipe: symmetric InfoNCE on freshly rendered batches, with *multi-positive*
targets, plus an auxiliary linear cross-entropy per attribute (``losses.py``).
The auxiliary heads are thrown away at export: the shipped model is a plain
open_clip CLIP, loaded back through the registry like any other.

Training is wall-clock limited and resumable: a checkpoint (model, optimizer,
step, elapsed time, RNG states) is written atomically to the work folder every
couple of minutes, and rerunning the same command continues from it. Each
step's batch is rendered from the seed ``(seed, step)``, so a resumed run sees
the same data as an uninterrupted one.
"""

from __future__ import annotations

import io
import math
import random
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from precompute.errors import InputError
from precompute.store import write_bytes_atomic, write_json_atomic
from precompute.toyworld.captions import CaptionDropout
from precompute.toyworld.generator import render_batch
from precompute.toyworld.losses import AuxHeads, contrastive_loss, match_matrix
from precompute.toyworld.models import create_toy_model, evaluate, export, init_sincos_positions, model_name, to_tensor

CHECKPOINT = "checkpoint.pt"
# Fields that define a run: a checkpoint made with other values is not resumed.
RECIPE_FIELDS = ("model", "seed", "batch_size", "lr", "weight_decay", "warmup", "grad_clip", "aux_weight", "dropout",
                 "pos_init", "bf16", "group")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; stored in the checkpoint and the training record."""

    model: str = "toy-m"
    seed: int = 0
    minutes: float | None = 15.0  # wall-clock budget of training steps (None: no clock limit)
    steps: int | None = None  # step budget; training stops at whichever budget ends first
    batch_size: int = 128
    lr: float = 1.5e-3
    weight_decay: float = 0.1
    warmup: int = 40
    grad_clip: float = 1.0
    aux_weight: float = 15.0  # times the mean over attributes of the auxiliary cross-entropies
    dropout: CaptionDropout = field(default_factory=CaptionDropout)
    pos_init: str = "sincos"  # initial vision positional embedding: "sincos" (2D sin-cos) or "random" (open_clip's)
    bf16: bool = True
    group: int = 1  # >1: batches of contrast groups that differ in one attribute (hard in-batch negatives)
    checkpoint_seconds: float = 120.0

    def __post_init__(self):
        model_name(self.model)
        if self.minutes is None and self.steps is None:
            raise InputError("give a training budget: minutes, steps or both")
        checks = {"minutes": self.minutes is None or self.minutes > 0, "steps": self.steps is None or self.steps > 0,
                  "batch_size": self.batch_size >= 2, "lr": self.lr > 0, "aux_weight": self.aux_weight >= 0,
                  "group": 1 <= self.group <= self.batch_size, "pos_init": self.pos_init in ("sincos", "random")}
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"bad training option {name}={getattr(self, name)!r}; minutes, steps, lr must be > 0, "
                                 "batch_size >= 2, aux_weight >= 0, 1 <= group <= batch_size, pos_init sincos|random")


class Tokens:
    """open_clip's tokenizer with a cache: the toy world has few distinct captions."""

    def __init__(self, context_length: int):
        from open_clip.tokenizer import SimpleTokenizer

        self.tokenize = SimpleTokenizer(context_length=context_length)
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            self.cache.update(zip(new, self.tokenize(new)))
        return torch.stack([self.cache[t] for t in texts])


def learning_rate(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warmup, then cosine to 0 over the step budget or the clock, whichever ends first."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = elapsed / (cfg.minutes * 60) if cfg.minutes is not None else 0.0
    if cfg.steps is not None:
        progress = max(progress, step / cfg.steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _recipe(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    return {k: d[k] for k in RECIPE_FIELDS}


def _save_atomic(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def train_step(model, aux: AuxHeads, opt, batch, tokens: Tokens, cfg: TrainConfig) -> tuple[float, float, float]:
    """One optimisation step on a rendered batch; returns (total, contrastive, auxiliary) loss."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
        img = model.encode_image(to_tensor(batch.images))  # [b, d] unnormalised
        txt = model.encode_text(tokens(batch.captions))  # [b, d]
        aux_loss = aux(img, torch.from_numpy(batch.codes))
    scale = model.logit_scale.exp().clamp(max=100)
    con_loss = contrastive_loss(F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1), scale,
                                match_matrix(batch.codes, batch.named))
    loss = con_loss + cfg.aux_weight * aux_loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
    opt.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, math.log(100))
    return loss.item(), con_loss.item(), aux_loss.item()


@contextmanager
def _stop_requests():
    """Turn SIGINT/SIGTERM into a flag checked between steps, so a checkpoint never holds half a step."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request(signum, frame):
        if flag["stop"]:  # asked twice: stop now
            raise KeyboardInterrupt
        flag["stop"] = True

    old = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights."""

    step: int = 0
    elapsed: float = 0.0  # seconds of training so far, over every resumed segment
    losses: list = field(default_factory=list)  # [step, total, contrastive, aux] every 10 steps
    done: bool = False


def train(cfg: TrainConfig, work: Path, fresh: bool = False, progress: bool = True) -> tuple[torch.nn.Module, TrainState]:
    """Train (or resume) a toy model in ``work``; return the model and the final state.

    Runs on torch's current CPU threads: the caller (the CLI's ``--threads``) sets them.
    """
    from tqdm import tqdm

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = create_toy_model(cfg.model)
    if cfg.pos_init == "sincos":
        init_sincos_positions(model)
    aux = AuxHeads(model.text_projection.shape[1])
    params = [
        {"params": [p for p in (*model.parameters(), *aux.parameters()) if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in (*model.parameters(), *aux.parameters()) if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    state = TrainState()
    ckpt_path = work / CHECKPOINT
    if ckpt_path.exists() and not fresh:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["recipe"] != _recipe(cfg):
            diff = {k: (ckpt["recipe"].get(k), v) for k, v in _recipe(cfg).items() if ckpt["recipe"].get(k) != v}
            raise InputError(
                f"checkpoint {ckpt_path} was made with other settings (checkpoint, asked): {diff}; "
                "use the same options to resume, or --fresh / another --work folder to start over"
            )
        model.load_state_dict(ckpt["model"])
        aux.load_state_dict(ckpt["aux"])
        opt.load_state_dict(ckpt["optimizer"])
        state = TrainState(**ckpt["state"])
        state.done = False
        _set_rng_state(ckpt["rng"])

    def checkpoint():
        _save_atomic(
            {"model": model.state_dict(), "aux": aux.state_dict(), "optimizer": opt.state_dict(),
             "state": asdict(state), "rng": _rng_state(), "recipe": _recipe(cfg), "config": asdict(cfg)},
            ckpt_path,
        )

    def finished() -> bool:
        return (cfg.steps is not None and state.step >= cfg.steps) or (
            cfg.minutes is not None and state.elapsed >= cfg.minutes * 60)

    def done_so_far() -> float:  # the bar counts steps under a step budget, else seconds
        return state.step if by_steps else state.elapsed

    tokens = Tokens(model.context_length)
    model.train()
    by_steps = cfg.minutes is None
    budget = cfg.steps if by_steps else cfg.minutes * 60
    bar = tqdm(total=round(budget), initial=min(budget, round(done_so_far())), unit="step" if by_steps else "s",
               desc=cfg.model, disable=not progress, bar_format=None if by_steps else "{l_bar}{bar}| {n:.0f}/{total}s [{elapsed}<{remaining}{postfix}]")
    last_ckpt = time.monotonic()
    smooth = None
    with _stop_requests() as stop:
        try:
            while not finished() and not stop["stop"]:
                t0 = time.monotonic()
                batch = render_batch(cfg.batch_size, (cfg.seed, state.step), cfg.dropout, cfg.group)
                for group in opt.param_groups:
                    group["lr"] = learning_rate(cfg, state.step, state.elapsed)
                loss, con_loss, aux_loss = train_step(model, aux, opt, batch, tokens, cfg)
                state.step += 1
                dt = time.monotonic() - t0
                state.elapsed += dt
                smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
                if state.step % 10 == 0:
                    state.losses.append([state.step, round(loss, 4), round(con_loss, 4), round(aux_loss, 4)])
                bar.update(min(budget, done_so_far()) - bar.n)
                bar.set_postfix(step=state.step, loss=f"{smooth:.3f}", con=f"{con_loss:.3f}", aux=f"{aux_loss:.3f}")
                if time.monotonic() - last_ckpt > cfg.checkpoint_seconds:
                    checkpoint()
                    last_ckpt = time.monotonic()
            state.done = finished()
        finally:
            bar.close()
            checkpoint()  # also after Ctrl-C / SIGTERM / an error, so the next run resumes from here
    return model, state


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def training_record(cfg: TrainConfig, state: TrainState, model: torch.nn.Module, evaluation: dict) -> dict:
    """The training_record.json content: what made the weights and how well they do."""
    import open_clip

    tail = [row[1] for row in state.losses[-5:]]
    return {
        "model": cfg.model,
        "config": asdict(cfg),
        "steps": state.step,
        "minutes": round(state.elapsed / 60, 2),
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "final_loss": round(float(np.mean(tail)), 4) if tail else None,
        "loss_history": state.losses,
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "zero_shot": evaluation,
        "recipe": {"aux_weight": cfg.aux_weight, "aux_loss": "mean over attributes of linear CE on the unnormalised image embedding",
                   "contrastive": "symmetric InfoNCE, multi-positive targets from the attributes each caption names",
                   "caption_dropout": asdict(cfg.dropout), "optimizer": "AdamW(0.9, 0.98), wd on matrices only",
                   "schedule": "linear warmup, cosine over the step/clock budget", "bf16_autocast": cfg.bf16,
                   "contrast_group": cfg.group},
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "git_commit": _git_commit(),
    }


def train_and_export(cfg: TrainConfig, out: Path, work: Path, fresh: bool = False, progress: bool = True) -> dict:
    """Train (resuming if possible), export to ``out``, evaluate the export, write training_record.json."""
    model, state = train(cfg, work, fresh=fresh, progress=progress)
    if not state.done:
        raise InputError(f"training stopped early at step {state.step}; rerun the same command to resume from {work}")
    export(model, cfg.model, out)
    record = training_record(cfg, state, model, evaluate(out))
    write_json_atomic(out / "training_record.json", record)
    return record


def config_with(base: TrainConfig, **changes) -> TrainConfig:
    """A copy of a config with some fields changed (None values are ignored)."""
    return replace(base, **{k: v for k, v in changes.items() if v is not None})
