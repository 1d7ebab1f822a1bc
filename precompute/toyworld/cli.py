"""``clip-interpret toyworld``: generate probe images, train and evaluate the toy CLIP models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from precompute.runtime import passive_openmp
from precompute.toyworld.captions import ATTRIBUTE_NAMES

passive_openmp()  # takes effect only if torch was not imported before this module

app = typer.Typer(help="The toy world: procedural images with known attributes and the small CLIP models trained on them.")


@app.command()
def images(
    out: Annotated[Path, typer.Option(help="Folder to write OUT/<shape>/NNNNNN.png and OUT/attributes.parquet into.")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 5000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed and n give byte-identical images.")] = 0,
) -> None:
    """Write a probe set of toy-world images laid out as class folders by shape."""
    from precompute.toyworld.generator import write_probe_set

    path = write_probe_set(out, n, seed, progress=True)
    typer.echo(f"wrote {n} images and {path}")


@app.command()
def train(
    size: Annotated[str, typer.Option(help="Model size: s, m or l (configs toy-s, toy-m, toy-l).")] = "m",
    minutes: Annotated[Optional[float], typer.Option(help="Wall-clock budget of training in minutes, summed over resumed runs (default 15 unless --steps is given).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Step budget; with --minutes too, training stops at whichever ends first.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the initial weights and the training batches.")] = 0,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step (default: the recipe's).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (default: the recipe's).")] = None,
    aux_weight: Annotated[Optional[float], typer.Option(help="Weight of the auxiliary attribute loss; 0 gives plain CLIP training.")] = None,
    bf16: Annotated[Optional[bool], typer.Option(help="bf16 autocast on CPU (default: on; see benchmarks/toyworld_speed.py).")] = None,
    group: Annotated[Optional[int], typer.Option(help="Build batches from groups of this many images that differ in one attribute (hard negatives); 1 draws each image independently.")] = None,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads for training and the final evaluation.")] = 2,
    out: Annotated[Optional[Path], typer.Option(help="Where to export the trained model (default runs/_models/toy-<size>; the shipped ones are data/models/toy-<size>).")] = None,
    work: Annotated[Optional[Path], typer.Option(help="Working folder for checkpoints (default runs/_train/toy-<size>; the dashboard does not search _ folders).")] = None,
    fresh: Annotated[bool, typer.Option(help="Ignore an existing checkpoint in the working folder and start over.")] = False,
) -> None:
    """Train a toy CLIP model (resumes from the last checkpoint if the work folder has one), export and evaluate it."""
    import torch

    from precompute import paths
    from precompute.toyworld.models import model_name
    from precompute.toyworld.train import TrainConfig, config_with, train_and_export

    name = model_name(size)
    if minutes is None and steps is None:
        minutes = 15.0
    cfg = config_with(TrainConfig(model=name, minutes=minutes, steps=steps, seed=seed),
                      batch_size=batch_size, lr=lr, aux_weight=aux_weight, bf16=bf16, group=group)
    torch.set_num_threads(threads)
    out = out or paths.export_dir(name)
    work = work or paths.train_dir(name)
    record = train_and_export(cfg, out, work, fresh=fresh)
    typer.echo(f"exported {name} to {out} after {record['steps']} steps, {record['minutes']} min, final loss {record['final_loss']}")
    _print_accuracy(record["zero_shot"])


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="An exported model folder (open_clip local-dir), or a shipped toy model: toy-s, toy-m, toy-l.")],
    n: Annotated[int, typer.Option(help="Number of fresh evaluation images.")] = 1000,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the evaluation images (default: the one training records use).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
    threads: Annotated[int, typer.Option(min=1, help="torch CPU threads.")] = 2,
) -> None:
    """Zero-shot accuracy per attribute of an exported toy model."""
    import torch

    from precompute.toyworld.models import EVAL_SEED
    from precompute.toyworld.models import evaluate as run_evaluate

    torch.set_num_threads(threads)
    result = run_evaluate(model, n=n, seed=EVAL_SEED if seed is None else seed)
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    else:
        _print_accuracy(result)


def _print_accuracy(result: dict) -> None:
    typer.echo(f"zero-shot accuracy on {result['images']} images (seed {result['seed']}):")
    for a in ATTRIBUTE_NAMES:
        typer.echo(f"  {a:<11} {result['accuracy'][a]:.3f}   (chance {result['chance'][a]:.3f})")
