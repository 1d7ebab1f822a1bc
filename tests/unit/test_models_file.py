"""`run --models FILE`: the parser (CSV, YAML, shipped names, refusals), the planner, and the shipped zoo lists."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from precompute import pipeline
from precompute.errors import InputError
from precompute.models_file import ZOO_DIR, ModelRow, read_models_file, resolve
from precompute.registry import builtin_config, decomposability

BUILD_ZOO = Path(__file__).resolve().parents[2] / "scripts" / "build_zoo.py"


def build_zoo():
    """scripts/build_zoo.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("build_zoo", BUILD_ZOO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_csv_with_comments_aliases_and_empty_fields(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("# a comment\nArchitecture,weights,probe,out,note\n"
                 "ViT-B-32,openai,/data/val,,the first\n\ntoy-s,,,runs/s,\n")
    assert read_models_file(f) == [ModelRow(3, "ViT-B-32", "openai", Path("/data/val"), None),
                                   ModelRow(5, "toy-s", None, None, Path("runs/s"))]


@pytest.mark.parametrize("text", [
    "- {model: ViT-B-16, pretrained: laion2b_s34b_b88k, images: /v}\n- model: toy-m\n",
    "models:\n  - {model: ViT-B-16, pretrained: laion2b_s34b_b88k, images: /v}\n  - {model: toy-m, images: null}\n",
])
def test_yaml_list_or_models_key(tmp_path, text):
    f = tmp_path / "m.yaml"
    f.write_text(text)
    assert read_models_file(f) == [ModelRow(1, "ViT-B-16", "laion2b_s34b_b88k", Path("/v")), ModelRow(2, "toy-m")]


@pytest.mark.parametrize("name,text,message", [
    ("m.csv", "model,weights,colour\nViT-B-32,openai,red\n", "unknown column 'colour'; the columns are model"),
    ("m.csv", "model,pretrained\n,openai\n", "line 2 names no model"),
    ("m.csv", "model,pretrained\ntoy-s,\ntoy-s,\n", "line 3 repeats line 2"),
    ("m.csv", "model,pretrained\nViT-B-32,openai,/x,extra\n", "line 2 has 4 values for 2 columns"),
    ("m.csv", "# nothing\n", "no models in it"),
    ("m.yaml", "model: ViT-B-32\n", "expected a list of mappings"),
    ("m.yaml", "- [unclosed\n", "is not valid YAML"),
    ("m.json", "[]", "expected a .csv, .yaml, .yml file"),
])
def test_bad_files_are_one_clear_error(tmp_path, name, text, message):
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_models_file(f)


def test_a_missing_file_names_the_shipped_lists_and_a_shipped_name_resolves(tmp_path):
    with pytest.raises(InputError, match=r"no such file \(shipped lists: study, vit_zoo\)"):
        read_models_file(tmp_path / "nope.csv")
    assert resolve("study") == ZOO_DIR / "study.csv"
    with pytest.raises(InputError):
        resolve("sub/study")  # a name is a bare word, never a path that happens not to exist


def test_the_shipped_zoo_is_current_and_every_pair_decomposable():
    """vit_zoo.csv is what scripts/build_zoo.py writes now; study.csv is six of its pairs."""
    zoo = build_zoo()
    rows, listed = zoo.zoo_rows()
    assert (ZOO_DIR / "vit_zoo.csv").read_bytes() == zoo.render(rows, listed)
    shipped = read_models_file(ZOO_DIR / "vit_zoo.csv")
    assert len(shipped) == len(rows) > 50 and all(r.images is None for r in shipped)
    assert all(decomposability(builtin_config(r.model)) is None for r in shipped)
    assert not any(r.model.startswith(("RN", "ViT-SO400M", "coca", "EVA")) for r in shipped)  # ResNet, SigLIP, ...
    study = read_models_file("study")
    assert len(study) == 6 and {(r.model, r.pretrained) for r in study} <= {(r.model, r.pretrained) for r in shipped}


def test_models_are_planned_as_single_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIP_INTERPRET_DATA_DIR", str(tmp_path / "work"))
    monkeypatch.setattr(pipeline, "ensure_default_probe", lambda progress=True: tmp_path / "toyprobe")
    f = tmp_path / "m.csv"
    f.write_text(f"model,pretrained,images,out\nViT-B-32,openai,,\ntoy-s,,,\ntoy-m,,{tmp_path / 'p'},{tmp_path / 'x'}\n")
    base = pipeline.DecomposeRequest(images=tmp_path / "val", layers="-2:", engine="ray")
    plans = pipeline.plan(pipeline.RunRequest(base, models=f, k=7), progress=False)
    got = [(p.source.model, p.source.pretrained, p.source.images, p.source.out, p.textspan.pool) for p in plans]
    assert got == [("ViT-B-32", "openai", tmp_path / "val", tmp_path / "work" / "ViT-B-32-openai", "general"),
                   ("toy-s", None, tmp_path / "val", tmp_path / "work" / "toy-s", "toyworld"),
                   ("toy-m", None, tmp_path / "p", tmp_path / "x", "toyworld")]
    assert all(p.source.layers == "-2:" and p.source.engine == "ray" and p.textspan.k == 7 for p in plans)

    under = pipeline.plan(pipeline.RunRequest(dataclasses.replace(base, out=tmp_path / "runs"), models=f), False)
    assert [p.source.out for p in under] == [tmp_path / "runs" / "ViT-B-32-openai", tmp_path / "runs" / "toy-s",
                                             tmp_path / "x"]
    toys = tmp_path / "toys.csv"
    toys.write_text("model\ntoy-s\n")
    (toy,) = pipeline.plan(pipeline.RunRequest(pipeline.DecomposeRequest(), models=toys), False)
    assert toy.source.images == tmp_path / "toyprobe"  # a toy model without images: the toy-world probe set


def test_models_file_refusals(tmp_path):
    same = tmp_path / "same.csv"
    same.write_text(f"model,pretrained,images,out\ntoy-s,,{tmp_path},{tmp_path / 'r'}\ntoy-m,,{tmp_path},{tmp_path / 'r'}\n")
    with pytest.raises(InputError, match=r"line 3 \(toy-m\) would write into .*/r, as toy-s does"):
        pipeline.plan(pipeline.RunRequest(pipeline.DecomposeRequest(), models=same), False)
    f = tmp_path / "m.csv"
    f.write_text("model,pretrained\nViT-B-32,openai\n")
    with pytest.raises(InputError, match="line 2 .ViT-B-32. names no images; add an 'images' column or pass --images"):
        pipeline.plan(pipeline.RunRequest(pipeline.DecomposeRequest(), models=f), False)
    for base in (pipeline.DecomposeRequest(model="toy-s"), pipeline.DecomposeRequest(pretrained="openai"),
                 pipeline.DecomposeRequest(random_init=True)):
        with pytest.raises(InputError, match="--models excludes --model, --pretrained and --random-init"):
            pipeline.plan(pipeline.RunRequest(base, models=f), False)
