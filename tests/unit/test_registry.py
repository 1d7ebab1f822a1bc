"""Model loading: weights sources, offline tags, refusals with useful messages (the geometry ones included)."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from precompute import registry, weights
from precompute.errors import InputError, ModelError, OfflineError
from precompute.registry import ModelSpec, WeightsSource, load_model, parse_layers, parse_weights


def test_unknown_architecture_lists_close_matches():
    with pytest.raises(ModelError) as e:
        registry.model_config("ViT-B-33", WeightsSource("none"))
    assert "ViT-B-32" in str(e.value) and "clip-interpret models" in str(e.value)


def test_offline_tag_fails_fast_without_trying_to_download(monkeypatch):
    def no_download(*a, **k):  # pragma: no cover - reached only if the offline check is missing
        raise AssertionError("tried to build/download the model")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_download)
    monkeypatch.setattr(weights, "cached_tag_file", lambda *a: None)
    spec = ModelSpec("ViT-B-32", parse_weights("ViT-B-32", "openai"))
    assert spec.weights == WeightsSource("tag", "openai")
    with pytest.raises(OfflineError) as e:
        load_model(spec)
    msg = str(e.value)
    assert "local-dir:" in msg and "weights file" in msg and "openai" in msg


def test_offline_probe_honours_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert registry.hub_reachable() is False


@pytest.mark.parametrize("arch,needle", [
    ("convnext_base", "timm"),
    ("RN50", "ResNet"),
    ("ViT-B-16-SigLIP", "timm"),
    ("coca_ViT-B-32", "attentional pooler"),
    ("vit_medium_patch16_gap_256", "timm"),
])
def test_non_decomposable_models_are_refused_naming_what_is_supported(arch, needle):
    with pytest.raises(ModelError) as e:
        load_model(ModelSpec(arch, WeightsSource("none")))
    assert needle in str(e.value) and "Supported:" in str(e.value)


def test_pooling_other_than_tok_is_refused():
    cfg = {"vision_cfg": {"layers": 2, "width": 64, "pool_type": "avg"}, "text_cfg": {}, "embed_dim": 8}
    assert "pools with 'avg'" in registry.decomposability(cfg)


def test_parse_weights_kinds(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")
    assert parse_weights("test-tiny", str(f)) == WeightsSource("file", str(f.resolve()))
    assert parse_weights("test-tiny", f"local-dir:{tmp_path}") == WeightsSource("local-dir", str(tmp_path.resolve()))
    assert parse_weights("test-tiny", None, random_init=True) == WeightsSource("none", "0")
    assert parse_weights("ViT-B-32", "OpenAI") == WeightsSource("tag", "openai")


@pytest.mark.parametrize("pretrained,needle", [
    ("/nowhere/model.safetensors", "not found"),
    ("local-dir:/nowhere", "not found"),
    ("laion9000", "known tags for ViT-B-32: openai"),
])
def test_parse_weights_errors(pretrained, needle):
    with pytest.raises(InputError, match=needle):
        parse_weights("ViT-B-32", pretrained)


def test_parse_weights_requires_a_source_for_models_without_shipped_weights():
    with pytest.raises(InputError, match="--random-init"):
        parse_weights("ViT-B-32", None)
    with pytest.raises(InputError, match="exclude"):
        parse_weights("ViT-B-32", "openai", random_init=True)


def test_wrong_file_type_is_refused(tmp_path):
    f = tmp_path / "weights.txt"
    f.write_text("hello")
    with pytest.raises(InputError, match="unknown weights file type"):
        parse_weights("test-tiny", str(f))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_file_loads_the_same_weights(tmp_path, suffix):
    torch.manual_seed(3)
    src = load_model(ModelSpec("test-tiny", WeightsSource("none")))
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = load_model(ModelSpec("test-tiny", parse_weights("test-tiny", str(path))))
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert loaded.weights_sha256 == registry.file_sha256(path)


def test_local_dir_folder_loads_with_its_own_config(tmp_path):
    torch.manual_seed(4)
    src = load_model(ModelSpec("test-tiny", WeightsSource("none")))
    cfg = open_clip.get_model_config("test-tiny")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(tmp_path / "open_clip_model.safetensors"))
    loaded = load_model(ModelSpec("anything", parse_weights("anything", f"local-dir:{tmp_path}")))
    assert loaded.info.layers == 3 and loaded.info.heads == 4
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.model.encode_image(x), src.model.encode_image(x), atol=1e-6)


def test_random_init_is_seeded():
    a = load_model(ModelSpec("test-tiny", parse_weights("test-tiny", None, True, seed=1))).model.state_dict()
    b = load_model(ModelSpec("test-tiny", parse_weights("test-tiny", None, True, seed=1))).model.state_dict()
    c = load_model(ModelSpec("test-tiny", parse_weights("test-tiny", None, True, seed=2))).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_models_are_built_as_open_clip_builds_them():
    loaded = load_model(ModelSpec("test-tiny", WeightsSource("none")))
    assert isinstance(loaded.model.visual.transformer.resblocks[0].attn, torch.nn.MultiheadAttention)
    assert not loaded.model.training


def test_device_and_precision_checks():
    assert registry.resolve_device("cpu") == "cpu"
    with pytest.raises(InputError, match="unknown device"):
        registry.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            registry.resolve_device("cuda")
    with pytest.raises(InputError, match="needs a GPU"):
        registry.resolve_precision("fp16", "cpu")


def test_bf16_models_load_in_bf16_and_layer_scale_models_are_refused_in_low_precision():
    loaded = load_model(ModelSpec("test-tiny", WeightsSource("none"), "cpu", "bf16"))
    assert loaded.model.visual.conv1.weight.dtype == torch.bfloat16
    with pytest.raises(ModelError, match="layer scale.*--precision fp32"):
        load_model(ModelSpec("test-tiny-ls", WeightsSource("none"), "cpu", "bf16"))


@pytest.mark.parametrize("spec,expected", [
    (None, (8, 9, 10, 11)), ("-4:", (8, 9, 10, 11)), ("8,9,10,11", (8, 9, 10, 11)), ("11", (11,)),
    ("-1", (11,)), ("0:2", (0, 1)), ("::4", (0, 4, 8)),
])
def test_parse_layers(spec, expected):
    assert parse_layers(spec, 12) == expected


@pytest.mark.parametrize("spec", ["12", "a,b", "1:2:3:4", "20:"])
def test_parse_layers_errors(spec):
    with pytest.raises(InputError, match="--layers"):
        parse_layers(spec, 12)


def test_catalogue_marks_decomposable_models():
    cat = {e.architecture: e for e in registry.catalogue()}
    assert cat["ViT-B-32"].decomposable and "openai" in cat["ViT-B-32"].tags
    assert not cat["RN50"].decomposable
    assert cat["test-tiny"].project


# --------------------------------------------------------------------------- geometry, asserted where a model comes in


def _tiny_folder(tmp_path, **vision) -> WeightsSource:
    """An open_clip folder (config only) of test-tiny with ``vision`` overriding its vision config."""
    cfg = registry.model_config("test-tiny", WeightsSource("none"))
    cfg["vision_cfg"] |= vision
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return WeightsSource("local-dir", str(tmp_path))


@pytest.mark.parametrize("vision,needle", [
    (dict(image_size=[32, 48]), "its image_size [32, 48] is not square"),
    (dict(patch_size=[8, 16]), "its patch_size [8, 16] is not square"),
    (dict(width=66, head_width=16), "width 66 and head_width 16, which makes 4 heads"),
    (dict(width=64, head_width=128), "width 64 and head_width 128, which makes 0 heads"),
])
def test_a_config_with_a_geometry_the_decomposition_cannot_read_is_refused_before_the_build(
        tmp_path, monkeypatch, vision, needle):
    def no_build(*a, **k):  # pragma: no cover - reached only if the config check is missing
        raise AssertionError("built the model")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_build)
    with pytest.raises(ModelError) as e:
        load_model(ModelSpec("tiny-odd", _tiny_folder(tmp_path, **vision)))
    msg = str(e.value)
    assert msg.startswith("tiny-odd cannot be decomposed: ") and needle in msg and "Supported:" in msg
    assert ("square images on a square patch grid" in msg) == ("square" in needle)
    assert ("split the width evenly" in msg) == ("heads" in needle)


def test_a_square_size_given_as_a_pair_is_accepted(tmp_path):
    loaded = load_model(ModelSpec("tiny-pair", _tiny_folder(tmp_path, image_size=[32, 32], patch_size=[8, 8])))
    assert (loaded.info.image_size, loaded.info.patch_size, loaded.info.grid, loaded.info.tokens) == (32, 8, 4, 17)


def _break_attn_pool(m):
    m.visual.attn_pool = torch.nn.Identity()


def _break_in_proj(m):
    m.visual.transformer.resblocks[1].attn = torch.nn.Linear(64, 64)


def _set(path: str, value):
    """A breaker that sets the attribute at dotted ``path`` (from the model) to ``value``."""
    def brk(m):
        *parents, name = path.split(".")
        obj = m
        for p in parents:
            obj = obj[int(p)] if p.isdigit() else getattr(obj, p)
        setattr(obj, name, value)
    return brk


@pytest.mark.parametrize("brk,needle", [
    (_set("visual.transformer", None), "its vision tower is not an open_clip VisionTransformer"),
    (_break_attn_pool, "its vision tower has an attentional pooler"),
    (_set("visual.pool_type", "avg"), "its vision tower pools with 'avg', not the class token"),
    (_set("visual.transformer.resblocks.0.attn.num_heads", 3), "its 3 attention heads do not split the width 64"),
    (_break_in_proj, "the attention of block 1 has no fused in_proj_weight and out_proj"),
    (_set("visual.transformer.resblocks.2.attn.batch_first", False), "the attention of block 2 is not batch-first"),
    (_set("visual.transformer.resblocks.1.attn.num_heads", 2), "the attention of block 1 has 2 heads"),
    (_set("visual.image_size", (32, 48)), "its image_size 32x48 is not square"),
    (_set("visual.grid_size", (4, 6)), "its patch grid 4x6 is not square"),
])
def test_load_model_asserts_the_geometry_of_the_built_model(monkeypatch, brk, needle):
    build = open_clip.create_model_and_transforms

    def broken_build(*a, **k):
        model, train, preprocess = build(*a, **k)
        brk(model)
        return model, train, preprocess

    monkeypatch.setattr(open_clip, "create_model_and_transforms", broken_build)
    with pytest.raises(ModelError) as e:
        load_model(ModelSpec("test-tiny", WeightsSource("none")))
    msg = str(e.value)
    assert msg.startswith("test-tiny cannot be decomposed: ") and needle in msg and "Supported:" in msg

