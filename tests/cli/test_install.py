"""A wheel built from this tree, installed elsewhere, finds its shipped assets and writes under the current folder.

The check runs in a subprocess started with ``-S`` and a PYTHONPATH of the install
target plus the venv's site-packages (for the dependencies): ``-S`` keeps the
editable install's path hook out, so nothing is imported from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "precompute", "dashboard", "data")
# Made by the tools in a checkout's data/; a wheel must not carry them.
GENERATED = ("data/runs/decoy/manifest.json", "data/probe/toyworld/attributes.parquet", "data/train/toy-s/checkpoint.pt")

PROBE = """
import json, sys
from pathlib import Path

import precompute
from dashboard import settings
from precompute import cli, labels_llm, pipeline, pools, registry

pipeline.DEFAULT_PROBE_N = 4
weights = registry.shipped_weights_dir("toy-s")
print(json.dumps({
    "package": precompute.__file__,
    "toy_models": pipeline.toy_models(),
    "toy_s": None if weights is None else str(weights / "open_clip_model.safetensors"),
    "pool": str(pools.load_pool("toyworld").source),
    "examples": str(labels_llm.DEFAULT_EXAMPLES),
    "run_out": str(pipeline.default_out("toy-s", None, False).absolute()),
    "probe": str(pipeline.ensure_default_probe(progress=False).absolute()),
    "dashboard": str(settings.resolve_data_dir([], {})),
}))
"""


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built offline from a copy of the sources, with decoy run/probe/train files in its data/."""
    src = tmp_path_factory.mktemp("src")
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "runs", "probe", "train")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=skip)
        else:
            shutil.copy2(ROOT / name, src / name)
    for rel in GENERATED:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("generated, not shipped")
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(out), str(src)], check=True, cwd=src, timeout=300)
    (built,) = out.glob("clip_interpret-*.whl")
    return built


@pytest.mark.slow
def test_wheel_ships_the_assets_and_every_module_but_no_generated_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for d in ("precompute", "dashboard") for p in (ROOT / d).rglob("*.py")
               if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)
    assets = {n for n in names if "/models/toy-" in n or "/pools/" in n or n.endswith("llm_examples.json")}
    assert len(assets) == 9 + 2 + 1, sorted(assets)  # three files per toy model, two pools, the LLM examples
    assert not [n for n in names if any(f"/{d}/" in n for d in ("runs", "probe", "train"))], sorted(names)


@pytest.mark.slow
def test_installed_package_finds_its_assets_and_writes_under_the_current_folder(wheel, tmp_path):
    target, cwd = tmp_path / "site", tmp_path / "somewhere"
    cwd.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile", "-q",
                    "--target", str(target), str(wheel)], check=True, timeout=300)
    installed = _files(target)
    deps = sysconfig.get_paths()["purelib"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CLIP_INTERPRET_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(target), deps]), HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-S", "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])

    assert Path(got["package"]).is_relative_to(target), got["package"]  # not the checkout
    assert got["toy_models"] == ["toy-s", "toy-m", "toy-l"]
    shipped = ROOT / "data" / "models" / "toy-s" / "open_clip_model.safetensors"
    assert got["toy_s"] and Path(got["toy_s"]).is_relative_to(target), got["toy_s"]
    assert Path(got["toy_s"]).read_bytes() == shipped.read_bytes()
    for key, original in (("pool", "pools/toyworld.csv"), ("examples", "llm_examples.json")):
        assert Path(got[key]).is_relative_to(target), got[key]
        assert Path(got[key]).read_bytes() == (ROOT / "data" / original).read_bytes()
    runs = cwd.resolve() / "runs"
    assert Path(got["run_out"]) == runs / "toy-s"
    assert Path(got["dashboard"]) == runs
    assert Path(got["probe"]).is_relative_to(runs) and (Path(got["probe"]) / "attributes.parquet").is_file()
    assert _files(target) == installed  # nothing written next to the installed package
