"""`clip-interpret analyse ...`: the dashboard's analyses over one run folder, as a table or ``--json``.

Every command reads the run through ``precompute.rundata.open_run`` and calls the functions the dashboard's
pages call (``precompute.analysis``, ``precompute.headsearch``; docs/design.md section 5.2). Commands that
embed a text or decompose an image load the run's model (``RunData.model``). cli.py registers the group.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

app = typer.Typer(help="The analyses over one run folder: neighbours, maps, head search. Tables, or --json.",
                  no_args_is_help=True)

Run = Annotated[Path, typer.Option("--run", help="The run folder (written by `clip-interpret run`).")]
Layer = Annotated[int, typer.Option(help="Layer of the head (absolute, 0-based).")]
Head = Annotated[int, typer.Option(help="Head index within the layer (0-based).")]
K = Annotated[int, typer.Option("-k", "--k", help="How many results.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON (one object) instead of a table.")]
Similarity = Annotated[str, typer.Option(help="centred (default): cosine of vectors minus the head's mean; "
                                              "cosine: of the vectors as stored; dot: the paper's raw dot product.")]
ImageId = Annotated[Optional[int], typer.Option(help="A dataset image of the run, by image_id.")]
ImageFile = Annotated[Optional[Path], typer.Option("--image", help="An image file (decomposed by the run's model).")]
Text = Annotated[str, typer.Option(help="The text (embedded by the run's model).")]


def _handled(fn):
    """cli.handle_errors, looked up when the command runs (cli.py imports this module)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from precompute.cli import handle_errors

        return handle_errors(fn)(*args, **kwargs)

    return wrapper


def _emit(frame, as_json: bool, title: str, **context) -> None:
    """A frame as a titled table, or as JSON {context..., "rows": [...]}."""
    if as_json:
        rows = json.loads(frame.to_json(orient="records", double_precision=10))
        typer.echo(json.dumps({**context, "rows": rows}, indent=1))
        return
    typer.echo(title)
    typer.echo(frame.to_string(index=False, float_format=lambda x: f"{x:.4g}") if len(frame) else "(nothing)")


def _query_image(run, m, image_id: int | None, image: Path | None, vector_of):
    """(query vector, row to leave out, its name) for a dataset image or an image file."""
    from precompute.errors import InputError

    if (image_id is None) == (image is None):
        raise InputError("give exactly one of --image-id (a dataset image) and --image FILE")
    if image_id is not None:
        row = run.image_row(m, image_id)
        return m.vectors[row], row, f"image {image_id}"
    return vector_of(run.decompose(image, spatial=False)), None, str(image)


def _neighbour_table(run, ids, scores, **context):
    from precompute import analysis

    return analysis.neighbours_frame(ids, scores, run.images, run.attributes, **context)


@app.command()
@_handled
def neighbours(run: Run, layer: Layer, head: Head, image_id: ImageId = None, image: ImageFile = None, k: K = 8,
               similarity: Similarity = "centred", as_json: Json = False) -> None:
    """Analysis 4: the images one head sees as closest to a query image."""
    from precompute import analysis
    from precompute.labels import head_name
    from precompute.rundata import open_run

    analysis.check_similarity(similarity)
    rd = open_run(run)
    m = rd.head(layer, head)
    query, exclude, name = _query_image(rd, m, image_id, image, lambda t: t.head_vector(layer, head))
    ids, scores = analysis.neighbours(m, query, k, similarity, exclude=exclude)
    _emit(_neighbour_table(rd, ids, scores), as_json, f"{len(ids)} nearest images to {name} by "
          f"{head_name(layer, head)} ({similarity})", run=str(run), layer=layer, head=head, query=name,
          similarity=similarity)


@app.command("text-neighbours")
@_handled
def text_neighbours(run: Run, layer: Layer, head: Head, text: Text, k: K = 8, similarity: Similarity = "centred",
                    as_json: Json = False) -> None:
    """Analysis 5: the images whose head vector points most along a text (the text is never centred)."""
    from precompute import analysis
    from precompute.labels import head_name
    from precompute.rundata import open_run

    analysis.check_similarity(similarity)
    rd = open_run(run)
    m = rd.head(layer, head)
    ids, scores = analysis.neighbours(m, rd.embed([text])[0], k, similarity, text=True)
    _emit(_neighbour_table(rd, ids, scores), as_json, f"{len(ids)} images {head_name(layer, head)} writes most "
          f"toward “{text}” ({similarity})", run=str(run), layer=layer, head=head, text=text, similarity=similarity)


@app.command("property-neighbours")
@_handled
def property_neighbours(run: Run, property: Annotated[str, typer.Option(help="A head label (e.g. color).")],
                        image_id: ImageId = None, image: ImageFile = None, k: K = 8,
                        similarity: Similarity = "centred", as_json: Json = False) -> None:
    """Analysis 1: the images closest to a query by the mean vector of one property's heads."""
    from precompute import analysis
    from precompute.rundata import open_run

    analysis.check_similarity(similarity)
    rd = open_run(run)
    heads = rd.heads_with(property)
    m = rd.property_vectors(property)
    query, exclude, name = _query_image(
        rd, m, image_id, image, lambda t: analysis.mean_vector([t.head_vector(l, h) for l, h in heads]))
    ids, scores = analysis.neighbours(m, query, k, similarity, exclude=exclude)
    _emit(_neighbour_table(rd, ids, scores), as_json, f"{len(ids)} nearest images to {name} by the {len(heads)} "
          f"{property} heads ({similarity})", run=str(run), property=property, query=name, similarity=similarity)


def _chosen(rd, layers: list[int] | None, head: int | None) -> list[tuple[int, int]]:
    from precompute.errors import InputError

    layers = layers or rd.layers
    if head is not None:
        if len(layers) != 1:
            raise InputError("--head needs exactly one --layer")
        rd.check_head(layers[0], head)
        return [(layers[0], head)]
    for layer in layers:
        rd.check_head(layer, 0)
    return [(l, h) for l in sorted(layers) for h in range(rd.n_heads)]


def _image_terms(rd, image_id: int | None, image: Path | None):
    from precompute.errors import InputError

    if (image_id is None) == (image is None):
        raise InputError("give exactly one of --image-id (a dataset image) and --image FILE")
    return rd.decompose(rd.image_file(image_id) if image_id is not None else image, spatial=True)


Layers = Annotated[Optional[list[int]], typer.Option("--layer", help="Layers whose heads are summed (repeat; "
                                                                      "default: every analysed layer).")]
OneHead = Annotated[Optional[int], typer.Option(help="Only this head of the one --layer.")]


def _grid_frame(grid: np.ndarray):
    import pandas as pd

    return pd.DataFrame(grid, columns=[f"c{j}" for j in range(grid.shape[1])]).rename_axis("row").reset_index()


@app.command("topic-map")
@_handled
def topic_map(run: Run, text: Text, image_id: ImageId = None, image: ImageFile = None, layer: Layers = None,
              head: OneHead = None, as_json: Json = False) -> None:
    """Analysis 2: where in the image the chosen heads write toward a text (the summed patch map)."""
    from precompute import analysis
    from precompute.rundata import open_run

    rd = open_run(run)
    chosen = _chosen(rd, layer, head)
    terms = _image_terms(rd, image_id, image)
    grid = analysis.summed_map(analysis.head_maps(terms, rd.embed([text])[0]), list(terms.layers), chosen)
    _emit(_grid_frame(grid), as_json, f"map of “{text}” summed over {len(chosen)} heads: total {grid.sum():.4g}",
          run=str(run), text=text, heads=len(chosen), total=float(grid.sum()))


@app.command()
@_handled
def contrastive(run: Run, text: Text, text_b: Annotated[str, typer.Option(help="The text to contrast with.")],
                image_id: ImageId = None, image: ImageFile = None, layer: Layers = None, head: OneHead = None,
                as_json: Json = False) -> None:
    """Analysis 3: map(text) - map(text-b), both summed over the same heads."""
    from precompute import analysis
    from precompute.rundata import open_run

    rd = open_run(run)
    chosen = _chosen(rd, layer, head)
    terms = _image_terms(rd, image_id, image)
    emb = rd.embed([text, text_b])  # [2, D]
    layers = list(terms.layers)
    m1, m2, diff = analysis.contrastive_map(analysis.head_maps(terms, emb[0]), analysis.head_maps(terms, emb[1]),
                                            layers, chosen)
    _emit(_grid_frame(diff), as_json, f"map(“{text}”) - map(“{text_b}”) over {len(chosen)} heads: totals "
          f"{m1.sum():.4g} - {m2.sum():.4g} = {diff.sum():.4g}", run=str(run), text=text, text_b=text_b,
          heads=len(chosen), total_a=float(m1.sum()), total_b=float(m2.sum()), total=float(diff.sum()))


@app.command()
@_handled
def search(run: Run, words: Annotated[Optional[str], typer.Option(help="Heads whose TEXTSPAN texts contain these "
                                                                       "words (stems, any order).")] = None,
           meaning: Annotated[Optional[str], typer.Option(help="Heads whose top texts are closest to this text.")] = None,
           property: Annotated[Optional[str], typer.Option(help="Heads labelled with this property.")] = None,
           k: K = 20, as_json: Json = False) -> None:
    """Search heads by the words of their texts, by meaning, or by label."""
    from precompute import headsearch
    from precompute.errors import InputError
    from precompute.rundata import open_run

    if sum(x is not None for x in (words, meaning, property)) != 1:
        raise InputError("give exactly one of --words, --meaning and --property")
    rd = open_run(run)
    labels = rd.labels if (rd.path / "head_labels.parquet").is_file() else None
    if property is not None:
        rd.heads_with(property)
        hits = headsearch.by_property(rd.labels, property)[["layer", "head", "property", "association", "ccs5"]]
        _emit(hits.head(k), as_json, f"{len(hits)} heads labelled {property}", run=str(run), property=property)
    elif words is not None:
        hits = headsearch.by_words(rd.picks, words, labels)
        _emit(hits.head(k), as_json, f"{len(hits)} heads whose texts contain “{words}”", run=str(run), words=words)
    else:
        frame, emb = rd.texts
        query = rd.embed([meaning])[0]
        far = headsearch.far_from_pool(query, frame["text"].tolist(), emb)
        if far.far and not as_json:
            typer.secho(f"warning: {far.message(meaning)}", fg=typer.colors.YELLOW, err=True)
        hits = headsearch.by_meaning(query, rd.picks, frame["text_id"].to_numpy(), emb, labels=labels)
        _emit(hits.head(k), as_json, f"heads closest in meaning to “{meaning}” ({headsearch.RANK_WEIGHT})",
              run=str(run), meaning=meaning, far_from_pool=far.far, pool_z=far.z, closest_pool_text=far.best_text)


@app.command("heads-for-text")
@_handled
def heads_for_text(run: Run, text: Text, image_id: ImageId = None, image: ImageFile = None, k: K = 10,
                   by: Annotated[str, typer.Option(help="centred: (r - mean) . t; projection: r . t; map_total: the "
                                                        "sum of the head's patch map.")] = "centred",
                   as_json: Json = False) -> None:
    """Which heads respond most to a text in one image."""
    from precompute import analysis
    from precompute.rundata import open_run

    rd = open_run(run)
    terms = _image_terms(rd, image_id, image)
    ranked = analysis.heads_for_text(terms.heads, terms.layers, rd.embed([text])[0],
                                     rd.head_means(list(terms.layers)), terms.tokens, by=by)
    if (rd.path / "head_labels.parquet").is_file():
        from precompute.headsearch import with_labels

        ranked = with_labels(ranked.drop(columns="rank"), rd.labels)
        ranked.insert(0, "rank", range(1, len(ranked) + 1))
    _emit(ranked.head(k), as_json, f"heads responding most to “{text}” (by {by})", run=str(run), text=text, by=by)
