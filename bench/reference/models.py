"""Model-forward benchmark of the Python references: PyTorch eager and ONNX Runtime (Python).

    python models.py --seed-cnn models/seed-cnn --effnet models/effnet-lite0 \
        --pth .cache/efficientnet/efficientnet-lite0-57934424.pth --threads 2 --seconds 3

For each model given: batch-1 latency (median, p99) over repeated calls for --seconds after a
warm-up, and batch-32 throughput over --seconds. Inputs are seeded random uint8 NHWC images,
fed to both engines as uint8 (the ONNX graphs take `image` u8 [N, S, S, 3] and return
`p_dog` [N]). PyTorch's p_dog and logit are compared with ONNX Runtime's on the same
images, which proves the weights were read the same way.

Prints one JSON line on stdout; logs go to stderr.
"""

import argparse
import json
import os
import sys
import time

from malloc_env import ensure_malloc_env

ensure_malloc_env()  # before importing torch: see malloc_env.py

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from nets import EfficientNetLite0CatDog, SeedCnn  # noqa: E402

WARMUP_S = 0.5
THROUGHPUT_BATCH = 32
CHECK_BATCH = 8


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def batch1_latency(run, x, seconds):
    """(median ms, p99 ms) of run(x) called repeatedly for `seconds`, after a warm-up."""
    end = time.perf_counter() + WARMUP_S
    while time.perf_counter() < end:
        run(x)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3, float(np.percentile(times, 99)) * 1e3


def throughput(run, x, seconds):
    """Images per second of run(x) on batch x for at least `seconds`, after 2 warm-up calls."""
    run(x)
    run(x)
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:
        run(x)
        calls += 1
    return calls * len(x) / (time.perf_counter() - start)


def bench_model(name, torch_model, onnx_path, size, args, rng):
    images = {n: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for n in (1, THROUGHPUT_BATCH, CHECK_BATCH)}

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])

    def ort_run(x):
        return session.run(["p_dog"], {"image": x})[0]

    torch_model = torch_model.eval().to(memory_format=torch.channels_last)
    torch_inputs = {n: torch.from_numpy(x) for n, x in images.items()}

    def torch_run(x):
        with torch.inference_mode():
            return torch.sigmoid(torch_model(x))

    # Random images give p_dog near 0 or 1, where the sigmoid flattens differences: the logits
    # are compared too (an error in padding or input scaling moves them by whole units).
    # Both are clipped to |logit| <= 20 so that a float32 p_dog saturated at 0 or 1 stays finite.
    with torch.inference_mode():
        torch_logit = torch_model(torch_inputs[CHECK_BATCH]).double().numpy()
    ort_p = ort_run(images[CHECK_BATCH]).astype(np.float64)
    diff = float(np.abs(1 / (1 + np.exp(-torch_logit)) - ort_p).max())
    with np.errstate(divide="ignore"):
        ort_logit = np.log(ort_p) - np.log1p(-ort_p)
    logit_diff = float(np.abs(np.clip(torch_logit, -20, 20) - np.clip(ort_logit, -20, 20)).max())
    log(f"{name}: pytorch vs onnxruntime on {CHECK_BATCH} random images: max |p_dog diff| {diff:.2e}, "
        f"max |logit diff| {logit_diff:.2e}")

    rows = []
    for engine, run, inputs, diffs in (
        ("pytorch-eager", torch_run, torch_inputs, (diff, logit_diff)),
        ("onnxruntime-python", ort_run, images, (None, None)),
    ):
        median, p99 = batch1_latency(run, inputs[1], args.seconds)
        img_s = throughput(run, inputs[THROUGHPUT_BATCH], args.seconds)
        log(f"{name} {engine}: batch 1 median {median:.2f} ms, p99 {p99:.2f} ms; batch 32 {img_s:.1f} img/s")
        rows.append(
            {
                "engine": engine,
                "model": name,
                "batch1_median_ms": round(median, 3),
                "batch1_p99_ms": round(p99, 3),
                "batch32_img_s": round(img_s, 1),
                "max_abs_diff_vs_ort": diffs[0],
                "max_abs_logit_diff_vs_ort": diffs[1],
            }
        )
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed-cnn", metavar="DIR", help="our seed CNN model dir (model.safetensors, model.onnx)")
    p.add_argument("--effnet", metavar="DIR", help="our EfficientNet-Lite0 model dir (head.safetensors, model.onnx)")
    p.add_argument("--pth", metavar="FILE", help="efficientnet-lite0-57934424.pth (needed with --effnet)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement (batch 1, then batch 32)")
    args = p.parse_args()
    if args.effnet and not args.pth:
        p.error("--effnet needs --pth")
    if not (args.seed_cnn or args.effnet):
        p.error("give --seed-cnn and/or --effnet")

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    if args.seed_cnn:
        model = SeedCnn().load_ours(os.path.join(args.seed_cnn, "model.safetensors"))
        rows += bench_model("seed-cnn", model, os.path.join(args.seed_cnn, "model.onnx"), 128, args, rng)
    if args.effnet:
        model = EfficientNetLite0CatDog.load_ours(args.pth, os.path.join(args.effnet, "head.safetensors"))
        rows += bench_model("effnet-lite0", model, os.path.join(args.effnet, "model.onnx"), 224, args, rng)

    versions = {"torch": torch.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__}
    print(json.dumps({"rows": rows, "versions": versions, "threads": args.threads}), flush=True)


if __name__ == "__main__":
    main()
