"""What the decomposition costs, as ratios measured side by side in one run (these machines are noisy).

1. Forward: images/s of plain ``encode_image`` (a model open_clip builds itself)
   vs the decomposition (the model as the registry loads it, with capture hooks,
   last 4 layers, token-summed), random-init ViT-B-32, batch 16, alternating
   runs; also the registry-loaded model's plain forward, as a control.
2. Command: the whole ``decompose`` stage (decoding, preprocessing, thumbnails,
   Parquet writes) vs the plain forward of the same images.
3. Memory: peak RSS of a fresh process running one batch, plain vs decomposition
   (ViT-L-14 by default), total and above the loaded model.
4. Disk: bytes of head vectors per image (D=512, 48 heads).

Usage: python benchmarks/decompose_overhead.py [--quick] [--rounds 5] [--memory-model ViT-L-14]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from precompute.decompose import Decomposer  # noqa: E402
from precompute.registry import ModelSpec, WeightsSource, load_model  # noqa: E402
from precompute.stage_decompose import DecomposeOptions, run_decompose  # noqa: E402


def stock_twin(loaded):
    twin = open_clip.create_model(loaded.spec.architecture, pretrained=None)
    twin.load_state_dict(loaded.model.state_dict())
    return twin.eval()


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def forward_ratio(arch: str, batch: int, rounds: int) -> dict:
    loaded = load_model(ModelSpec(arch, WeightsSource("none", "0")))
    stock = stock_twin(loaded)
    decomposer = Decomposer(loaded.model, range(loaded.info.layers - 4, loaded.info.layers))
    x = torch.randn(batch, 3, loaded.info.image_size, loaded.info.image_size)

    def plain(m):
        with torch.inference_mode():
            m.encode_image(x)

    for _ in range(2):  # warm-up
        plain(stock), plain(loaded.model), decomposer(x)
    t = {"stock": [], "loaded": [], "decompose": []}
    for _ in range(rounds):
        t["stock"].append(timed(plain, stock))
        t["loaded"].append(timed(plain, loaded.model))
        t["decompose"].append(timed(decomposer, x))
    med = {k: statistics.median(v) for k, v in t.items()}
    return {
        "model": arch, "batch": batch, "rounds": rounds,
        "stock_img_s": batch / med["stock"], "loaded_img_s": batch / med["loaded"],
        "decompose_img_s": batch / med["decompose"],
        "decompose_vs_stock": med["decompose"] / med["stock"],
        "loaded_vs_stock": med["loaded"] / med["stock"],
    }


def make_images(folder: Path, n: int, size=(500, 375)) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        cls = folder / f"class{i % 4}"
        cls.mkdir(parents=True, exist_ok=True)
        # smooth random images compress like photos, not like noise
        small = rng.integers(0, 255, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(cls / f"{i:05d}.jpg", quality=90)


def command_ratio(arch: str, n: int, batch: int, rounds: int, workers: int) -> dict:
    loaded = load_model(ModelSpec(arch, WeightsSource("none", "0")))
    stock = stock_twin(loaded)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_images(folder, n)
        from precompute.images import open_image

        paths = sorted(folder.rglob("*.jpg"))
        tensors = torch.stack([loaded.preprocess(open_image(p)[0]) for p in paths])  # [n, 3, H, W]

        def plain():
            with torch.inference_mode():
                for s in range(0, n, batch):
                    stock.encode_image(tensors[s:s + batch])

        def command(i):
            out = Path(tmp) / f"run{i}"
            run_decompose(loaded, DecomposeOptions(folder, out, None, None, batch, workers, 512, progress=False))
            return out

        plain()
        t_plain, t_cmd = [], []
        out = None
        for i in range(rounds):
            t_plain.append(timed(plain))
            t0 = time.perf_counter()
            out = command(i)
            t_cmd.append(time.perf_counter() - t0)
        head_bytes = sum(p.stat().st_size for p in (out / "head_vectors").rglob("*.parquet"))
        heads = len(list((out / "head_vectors").glob("*/*")))
        return {
            "model": arch, "images": n, "batch": batch, "workers": workers, "rounds": rounds,
            "plain_img_s": n / statistics.median(t_plain), "command_img_s": n / statistics.median(t_cmd),
            "command_vs_plain_throughput": statistics.median(t_plain) / statistics.median(t_cmd),
            "head_vector_bytes_per_image": head_bytes / n, "heads": heads,
            "raw_float32_bytes_per_image": heads * loaded.info.embed_dim * 4,
        }


MEMORY_CHILD = """
import os, sys, json, threading, time, torch
os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, {root!r})
import open_clip
from precompute.registry import ModelSpec, WeightsSource, load_model
from precompute.decompose import Decomposer
mode, arch, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "stock":
    model = open_clip.create_model(arch, pretrained=None).eval()
else:
    model = load_model(ModelSpec(arch, WeightsSource("none", "0"))).model
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
x = torch.randn(batch, 3, 224, 224)
peak = [0]; stop = [False]
def sample():
    while not stop[0]:
        peak[0] = max(peak[0], rss()); time.sleep(0.002)
base = rss()
t = threading.Thread(target=sample); t.start()
with torch.inference_mode():
    if mode == "decompose":
        n = model.visual.transformer.layers
        Decomposer(model, range(n - 4, n))(x)
    else:
        model.encode_image(x)
stop[0] = True; t.join()
peak[0] = max(peak[0], rss())
print(json.dumps({{"base_kb": base // 1024, "peak_kb": peak[0] // 1024}}))
"""


def memory_ratio(arch: str, batch: int) -> dict:
    root = str(Path(__file__).resolve().parent.parent)
    out = {}
    for mode in ("stock", "decompose"):
        res = subprocess.run([sys.executable, "-c", MEMORY_CHILD.format(root=root), mode, arch, str(batch)],
                             capture_output=True, text=True, check=True)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    s, d = out["stock"], out["decompose"]
    return {
        "model": arch, "batch": batch,
        "stock_peak_mb": s["peak_kb"] / 1024, "decompose_peak_mb": d["peak_kb"] / 1024,
        "peak_ratio": d["peak_kb"] / s["peak_kb"],
        "stock_forward_mb": (s["peak_kb"] - s["base_kb"]) / 1024,
        "decompose_forward_mb": (d["peak_kb"] - d["base_kb"]) / 1024,
        "forward_increment_ratio": (d["peak_kb"] - d["base_kb"]) / max(1, s["peak_kb"] - s["base_kb"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Small sizes: a smoke run of the benchmark itself.")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--memory-model", default="ViT-L-14")
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if args.quick:
        args.rounds, args.images, args.memory_model = 2, 32, "ViT-B-32"
    print(f"# decompose_overhead  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"cpus {os.cpu_count()}  rounds {args.rounds}")

    f = forward_ratio(args.model, 16, args.rounds)
    print(f"forward  {f['model']} batch 16: stock {f['stock_img_s']:.1f} img/s, registry-loaded "
          f"{f['loaded_img_s']:.1f} img/s, decomposition {f['decompose_img_s']:.1f} img/s")
    print(f"  decomposition / stock time = {f['decompose_vs_stock']:.3f}x   (target <= 1.05x)")
    print(f"  registry-loaded / stock time = {f['loaded_vs_stock']:.3f}x   (control: the same model, ~1.0x)")

    c = command_ratio(args.model, args.images, 16, max(2, args.rounds // 2), args.workers)
    print(f"command  {c['images']} JPEGs 500x375, workers {c['workers']}: plain forward {c['plain_img_s']:.1f} img/s, "
          f"whole decompose {c['command_img_s']:.1f} img/s")
    print(f"  decompose throughput / plain = {c['command_vs_plain_throughput']:.3f}x   (target >= 0.8x)")
    print(f"disk     {c['heads']} heads, D=512: {c['head_vector_bytes_per_image'] / 1000:.1f} kB per image "
          f"(raw float32 {c['raw_float32_bytes_per_image'] / 1000:.1f} kB; target <= 100 kB)")

    m = memory_ratio(args.memory_model, 16)
    print(f"memory   {m['model']} batch 16: stock peak {m['stock_peak_mb']:.0f} MB, decomposition peak "
          f"{m['decompose_peak_mb']:.0f} MB")
    print(f"  peak ratio = {m['peak_ratio']:.3f}x   (target <= 1.3x); forward-only increment "
          f"{m['stock_forward_mb']:.0f} MB vs {m['decompose_forward_mb']:.0f} MB = {m['forward_increment_ratio']:.2f}x")
    out_dir = Path(__file__).resolve().parent / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "decompose_overhead.json").write_text(json.dumps({"forward": f, "command": c, "memory": m}, indent=2))


if __name__ == "__main__":
    main()
