"""The manifest's model record: the weights as {kind, value, sha256}, rebuilt by one function; old manifests migrate."""

from __future__ import annotations

import functools
import json

import pytest
import torch

from precompute import registry, store
from precompute.paths import MODELS_DIR
from precompute.registry import ModelSpec, WeightsSource, load_model, spec_from_manifest
from precompute.stage_decompose import model_record
from precompute.weights import file_sha256, migrate_model_record


@functools.lru_cache(maxsize=1)
def toy_s_sha() -> str:
    return file_sha256(MODELS_DIR / "toy-s" / "open_clip_model.safetensors")


def round_trip(loaded: registry.LoadedModel) -> ModelSpec:
    record = json.loads(json.dumps(model_record(loaded)))  # as a manifest stores it
    spec, why = spec_from_manifest(record, loaded.spec.device)
    assert why is None
    return spec


def test_every_kind_round_trips_through_the_manifest_to_the_same_spec(tmp_path):
    tiny = load_model(ModelSpec("test-tiny", WeightsSource("none", "7")))
    assert model_record(tiny)["weights"] == {"kind": "none", "value": "7"}
    assert round_trip(tiny) == tiny.spec

    ckpt = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), ckpt)
    from_file = load_model(ModelSpec("test-tiny", registry.parse_weights("test-tiny", str(ckpt))))
    assert model_record(from_file)["weights"] == {"kind": "file", "value": str(ckpt.resolve()),
                                                 "sha256": file_sha256(ckpt)}
    assert round_trip(from_file) == from_file.spec

    shipped = load_model(ModelSpec("toy-s", registry.parse_weights("toy-s", None)))
    assert model_record(shipped)["weights"] == {"kind": "shipped", "value": "toy-s", "sha256": toy_s_sha()}
    assert round_trip(shipped) == shipped.spec

    folder = load_model(ModelSpec("toy-s", registry.parse_weights("toy-s", f"local-dir:{MODELS_DIR / 'toy-s'}")))
    assert model_record(folder)["weights"]["kind"] == "local-dir"
    assert round_trip(folder) == folder.spec


def test_a_changed_or_missing_checkpoint_is_refused_with_the_reason(tmp_path):
    ckpt = tmp_path / "w.pt"
    torch.save(load_model(ModelSpec("test-tiny", WeightsSource("none"))).model.state_dict(), ckpt)
    record = {"architecture": "test-tiny", "weights": {"kind": "file", "value": str(ckpt), "sha256": "0" * 64}}
    assert "sha256 mismatch" in spec_from_manifest(record)[1]
    record["weights"]["value"] = str(tmp_path / "gone.pt")
    assert "are not on this machine" in spec_from_manifest(record)[1]
    assert "unknown weights kind 'hub'" in spec_from_manifest({"architecture": "x", "weights": {"kind": "hub"}})[1]
    assert "does not say which weights" in spec_from_manifest({"architecture": "x"})[1]


def legacy(pretrained: str, kind: str, sha: str | None) -> dict:
    """A model record as manifests spelled it before the weights record."""
    return {"architecture": "toy-s", "pretrained": pretrained, "weights_kind": kind, "weights_sha256": sha,
            "precision": "fp32", "embed_dim": 64}


@pytest.mark.parametrize("old,weights", [
    # shipped weights recorded by the absolute path of the machine that made the run: found again by sha256
    (legacy("local-dir:/home/someone/clip-interpret/data/models/toy-s", "local-dir", "SHA"),
     {"kind": "shipped", "value": "toy-s", "sha256": "SHA"}),
    (legacy("local-dir:/exports/toy-s", "local-dir", "0" * 64),  # a folder named like a shipped model, other weights
     {"kind": "local-dir", "value": "/exports/toy-s", "sha256": "0" * 64}),
    (legacy("random-init:seed=3", "none", None), {"kind": "none", "value": "3"}),
    (legacy("openai", "tag", None), {"kind": "tag", "value": "openai"}),
    (legacy("/w/b32.safetensors", "file", "ab"), {"kind": "file", "value": "/w/b32.safetensors", "sha256": "ab"}),
])
def test_old_model_records_migrate_to_the_weights_record(old, weights):
    if old["weights_sha256"] == "SHA":
        old["weights_sha256"] = weights["sha256"] = toy_s_sha()
    new = migrate_model_record(old)
    assert new == {"architecture": "toy-s", "weights": weights, "precision": "fp32", "embed_dim": 64}
    assert list(new) == ["architecture", "weights", "precision", "embed_dim"]  # the old fields' place
    assert migrate_model_record(new) == new  # the current form is left as it is


def test_an_old_toy_manifest_from_another_machine_opens_and_rebuilds_the_shipped_model(tmp_path):
    manifest = {"schema_version": 1, "stages": {},
                "model": legacy("local-dir:/elsewhere/data/models/toy-s", "local-dir", toy_s_sha())}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    model = store.read_manifest(tmp_path)["model"]
    assert model["weights"] == {"kind": "shipped", "value": "toy-s", "sha256": toy_s_sha()}
    assert spec_from_manifest(model, "cpu") == (ModelSpec("toy-s", WeightsSource("shipped", "toy-s"), "cpu"), None)


def test_defaults_come_from_the_registry_record():
    assert registry.model_defaults("toy-m") == registry.ModelDefaults(pool="toyworld", probe="toyworld")
    assert registry.model_defaults("ViT-B-32") == registry.ModelDefaults(pool="general", probe=None)
    assert registry.shipped_toy_models() == ["toy-s", "toy-m", "toy-l"]
