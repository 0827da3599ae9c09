"""Training throughput of the seed CNN in Keras 3 (TensorFlow) or PyTorch eager.

    python train.py --engine keras|pytorch --threads 2 --seconds 20 --batch 32

Random uint8 128x128 images and random labels; dropout 0.5 before the last layer,
binary cross-entropy on the logit, Adam. Measures images/s of whole training steps
(forward, backward, update) after a warm-up. Prints one JSON line on stdout; logs go to stderr.
"""

import argparse
import json
import sys
import time

import numpy as np

WARMUP_STEPS = 3
DATA_BATCHES = 4  # distinct random batches, cycled
SIZE = 128


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def timed_steps(step, batches, seconds):
    """Runs WARMUP_STEPS, then steps for at least `seconds`; returns images/s."""
    for i in range(WARMUP_STEPS):
        step(*batches[i % len(batches)])
    steps, start = 0, time.perf_counter()
    while steps == 0 or time.perf_counter() - start < seconds:
        step(*batches[steps % len(batches)])
        steps += 1
    elapsed = time.perf_counter() - start
    log(f"{steps} steps in {elapsed:.1f} s")
    return steps * len(batches[0][0]) / elapsed


def keras_steps(batches, threads, seconds):
    import tensorflow as tf

    # Must precede any TensorFlow op. Inter-op = intra-op = threads is TF's own default on a
    # machine with `threads` cores.
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    import keras_seed

    model = keras_seed.build(logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy(from_logits=True))
    data = [(x, y.astype(np.float32)[:, None]) for x, y in batches]
    img_s = timed_steps(model.train_on_batch, data, seconds)
    return img_s, f"keras {keras.__version__} (tensorflow {tf.__version__})"


def pytorch_steps(batches, threads, seconds):
    import torch

    from nets import SeedCnn

    torch.set_num_threads(threads)
    model = SeedCnn().to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    data = [(torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))) for x, y in batches]

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return timed_steps(step, data, seconds), f"torch {torch.__version__}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", choices=("keras", "pytorch"), required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()

    if args.engine == "pytorch":
        from malloc_env import ensure_malloc_env

        ensure_malloc_env()  # see malloc_env.py

    rng = np.random.default_rng(0)
    batches = [
        (rng.integers(0, 256, (args.batch, SIZE, SIZE, 3), dtype=np.uint8), rng.integers(0, 2, args.batch))
        for _ in range(DATA_BATCHES)
    ]
    run = keras_steps if args.engine == "keras" else pytorch_steps
    img_s, version = run(batches, args.threads, args.seconds)
    log(f"{args.engine}: {img_s:.1f} img/s")
    print(json.dumps({"engine": args.engine, "train_img_s": round(img_s, 1), "version": version}), flush=True)


if __name__ == "__main__":
    main()
