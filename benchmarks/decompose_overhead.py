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
       python benchmarks/decompose_overhead.py --device cuda --precision bf16 --model ViT-L-14 --batch 256 \
           --images 5000 --image-size 224 --skip-memory     (what benchmarks/gpu_check.sh runs)
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
from precompute.paths import runs_dir  # noqa: E402
from precompute.registry import ModelSpec, WeightsSource, load_model  # noqa: E402
from precompute.stage_decompose import DecomposeOptions, run_decompose  # noqa: E402


def stock_twin(loaded):
    """The same weights in a model open_clip builds itself, at the same precision and on the same device."""
    device = next(loaded.model.parameters()).device
    twin = open_clip.create_model(loaded.spec.architecture, pretrained=None, precision=loaded.spec.precision,
                                  device=device)
    twin.load_state_dict(loaded.model.state_dict())
    return twin.eval()


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, *args, device="cpu") -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn(*args)
    _sync(device)  # kernels are asynchronous: time until they have finished
    return time.perf_counter() - t0


def _load(arch: str, device: str, precision: str):
    return load_model(ModelSpec(arch, WeightsSource("none", "0"), device, precision))


def forward_ratio(arch: str, batch: int, rounds: int, device: str = "cpu", precision: str = "fp32") -> dict:
    loaded = _load(arch, device, precision)
    stock = stock_twin(loaded)
    decomposer = Decomposer(loaded.model, range(loaded.info.layers - 4, loaded.info.layers))
    dtype = loaded.model.visual.conv1.weight.dtype
    x = torch.randn(batch, 3, loaded.info.image_size, loaded.info.image_size, device=device, dtype=dtype)

    def plain(m):
        with torch.inference_mode():
            m.encode_image(x)

    for _ in range(2):  # warm-up
        plain(stock), plain(loaded.model), decomposer(x)
    t = {"stock": [], "loaded": [], "decompose": []}
    for _ in range(rounds):
        t["stock"].append(timed(plain, stock, device=device))
        t["loaded"].append(timed(plain, loaded.model, device=device))
        t["decompose"].append(timed(decomposer, x, device=device))
    med = {k: statistics.median(v) for k, v in t.items()}
    return {
        "model": arch, "batch": batch, "rounds": rounds, "device": device, "precision": precision,
        "stock_img_s": batch / med["stock"], "loaded_img_s": batch / med["loaded"],
        "decompose_img_s": batch / med["decompose"],
        "decompose_vs_stock": med["decompose"] / med["stock"],
        "loaded_vs_stock": med["loaded"] / med["stock"],
    }


def _make_image(args) -> None:
    path, seed, size = args
    rng = np.random.default_rng(seed)
    # smooth random images compress like photos, not like noise
    small = rng.integers(0, 255, (max(1, size[1] // 25), max(1, size[0] // 25), 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path, quality=90)


def make_images(folder: Path, n: int, size=(500, 375)) -> None:
    jobs = []
    for i in range(n):
        cls = folder / f"class{i % 4}"
        cls.mkdir(parents=True, exist_ok=True)
        jobs.append((cls / f"{i:05d}.jpg", i, size))
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor() as pool:
        list(pool.map(_make_image, jobs, chunksize=64))


def command_ratio(arch: str, n: int, batch: int, rounds: int, workers: int | None, device: str = "cpu",
                  precision: str = "fp32", size=(500, 375)) -> dict:
    """The whole decompose stage vs the plain forward of the same images, decoded beforehand (uint8 in memory,
    copied and normalised per batch on the device, as the stage does)."""
    loaded = _load(arch, device, precision)
    stock = stock_twin(loaded)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        make_images(folder, n, size)
        from precompute.images import open_image, split_preprocess

        pixels = split_preprocess(loaded.preprocess)
        paths = sorted(folder.rglob("*.jpg"))
        crops = torch.stack([pixels.to_pixels(open_image(p)[0]) for p in paths])  # [n, 3, H, W] uint8
        dtype = loaded.model.visual.conv1.weight.dtype

        def plain():
            with torch.inference_mode():
                for s in range(0, n, batch):
                    x = pixels.normalise(crops[s:s + batch].to(device, non_blocking=True))
                    stock.encode_image(x.to(dtype)).cpu()

        def command(i):
            out = Path(tmp) / f"run{i}"
            run_decompose(loaded, DecomposeOptions(folder, out, None, None, batch, workers, 512, progress=False))
            return out

        plain()
        t_plain, t_cmd = [], []
        out = None
        for i in range(rounds):
            t_plain.append(timed(plain, device=device))
            t0 = time.perf_counter()
            out = command(i)
            t_cmd.append(time.perf_counter() - t0)
        head_bytes = sum(p.stat().st_size for p in (out / "head_vectors").rglob("*.parquet"))
        heads = len(list((out / "head_vectors").glob("*/*")))
        from precompute.stage_decompose import default_workers

        return {
            "model": arch, "images": n, "batch": batch, "rounds": rounds, "device": device, "precision": precision,
            "workers": default_workers(torch.device(device)) if workers is None else workers, "size": list(size),
            "plain_img_s": n / statistics.median(t_plain), "command_img_s": n / statistics.median(t_cmd),
            "command_vs_plain_throughput": statistics.median(t_plain) / statistics.median(t_cmd),
            "head_vector_bytes_per_image": head_bytes / n, "heads": heads,
            "raw_float32_bytes_per_image": heads * loaded.info.embed_dim * 4, "embed_dim": loaded.info.embed_dim,
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


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.partition("x")
    return int(w), int(h or w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Small sizes: a smoke run of the benchmark itself.")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--memory-model", default="ViT-L-14")
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--workers", type=int, default=None, help="Decoding processes (default: the stage's own).")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--precision", default="fp32", help="fp32 | bf16 | fp16")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", default="500x375", help="Generated JPEGs: WxH, or one number for squares.")
    ap.add_argument("--command-rounds", type=int, default=None, help="Rounds of the command (default rounds // 2).")
    ap.add_argument("--skip-memory", action="store_true", help="Skip the (CPU) peak-RSS comparison.")
    ap.add_argument("--json", type=Path, default=None, help="Write the figures here too.")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    if args.quick:
        args.rounds, args.images, args.memory_model = 2, 32, "ViT-B-32"
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.cpu_count()} cpus"
    print(f"# decompose_overhead  torch {torch.__version__}  {args.device} ({where})  {args.precision}  "
          f"threads {torch.get_num_threads()}  rounds {args.rounds}")
    b = args.batch

    f = forward_ratio(args.model, b, args.rounds, args.device, args.precision)
    print(f"forward  {f['model']} batch {b}: stock {f['stock_img_s']:.1f} img/s, registry-loaded "
          f"{f['loaded_img_s']:.1f} img/s, decomposition {f['decompose_img_s']:.1f} img/s")
    print(f"  decomposition / stock time = {f['decompose_vs_stock']:.3f}x   (target <= 1.05x)")
    print(f"  registry-loaded / stock time = {f['loaded_vs_stock']:.3f}x   (control: the same model, ~1.0x)")

    size = _size(args.image_size)
    c = command_ratio(args.model, args.images, b, args.command_rounds or max(2, args.rounds // 2), args.workers,
                      args.device, args.precision, size)
    print(f"command  {c['images']} JPEGs {size[0]}x{size[1]}, workers {c['workers']}: plain forward "
          f"{c['plain_img_s']:.1f} img/s, whole decompose {c['command_img_s']:.1f} img/s")
    print(f"  decompose throughput / plain = {c['command_vs_plain_throughput']:.3f}x   (target >= 0.8x)")
    print(f"disk     {c['heads']} heads, D={c['embed_dim']}: {c['head_vector_bytes_per_image'] / 1000:.1f} kB "
          f"per image (raw float32 {c['raw_float32_bytes_per_image'] / 1000:.1f} kB)")

    figures = {"forward": f, "command": c}
    if not args.skip_memory:
        m = memory_ratio(args.memory_model, 16)
        print(f"memory   {m['model']} batch 16: stock peak {m['stock_peak_mb']:.0f} MB, decomposition peak "
              f"{m['decompose_peak_mb']:.0f} MB")
        print(f"  peak ratio = {m['peak_ratio']:.3f}x   (target <= 1.3x); forward-only increment "
              f"{m['stock_forward_mb']:.0f} MB vs {m['decompose_forward_mb']:.0f} MB = "
              f"{m['forward_increment_ratio']:.2f}x")
        figures["memory"] = m
    out = args.json or runs_dir() / "benchmarks" / "decompose_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
