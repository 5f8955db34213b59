"""`make bench-train`: training images/s on one in-memory batch against the real input
pipeline (shuffle, gather, augmentation, one-hot, weights; with --erase and --distill, the random
erasing and teacher targets of the later cycles in training/CYCLES.md). The pipeline may cost at
most 10 %.

    python -m bench.train_pipeline [--data FER2013] [--steps 30] [--rounds 2] [--width 1.0]
                                   [--erase 0.5] [--distill 0.7]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from device.preprocess import preprocess
from training import data as fer
from training import train as T


def images_per_second(model, ds, steps: int, batch: int, warm: int = 2) -> float:
    """Steady-state speed: one iterator, timed from the end of its `warm`-th step (compiling and
    the pipeline's start-up, which a real epoch spreads over 225 steps of 128 faces, fall outside the timing)."""
    import keras

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch_index, logs=None):
            if batch_index == warm - 1:
                self.start = time.perf_counter()

    clock = Clock()
    model.fit(ds.take(warm + steps), verbose=0, callbacks=[clock])
    return steps * batch / (time.perf_counter() - clock.start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/fer2013/fer2013-training-publictest.zip")
    p.add_argument("--steps", type=int, default=30,
                   help="timed steps per round (many, so the batches prefetched during warm-up count little)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=T.DEFAULTS["batch_size"])
    p.add_argument("--precision", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="as training's: auto is mixed bfloat16 where the CPU has bf16 instructions")
    p.add_argument("--erase", type=float, default=T.DEFAULTS["erase"],
                   help="random-erasing probability (default %(default)s; the later cycles ran 0.5)")
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight of teacher targets (random ones here: their cost, not their values, counts)")
    args = p.parse_args(argv)
    for flag in ("steps", "rounds", "batch_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1")
    if args.width <= 0:  # the builder would quietly build its smallest layers and call them width 0
        p.error(f"--width {args.width}: must be above 0")

    import keras
    import tensorflow as tf

    policy = T.policy_name(args.precision)
    keras.mixed_precision.set_global_policy(policy)

    try:
        train = fer.load_split(args.data, "train")
    except fer.DataError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    # within one epoch: its short last batch, and the recompile its new shape brings, are no step's cost
    if (most := len(train) // args.batch_size - 2) < args.steps:
        print(f"bench: error: --steps {args.steps}: at most {most} with --batch-size {args.batch_size} on "
              f"{len(train)} faces (one epoch's full batches, after 2 warm-up steps)", file=sys.stderr)
        return 2
    cfg = dict(T.DEFAULTS, width=args.width, batch_size=args.batch_size, erase=args.erase, distill=args.distill)
    x = tf.constant(preprocess(train.x))
    y = tf.constant(train.y)
    w = tf.constant(T.class_weights(train.y, cfg["class_weight_power"])[train.y], tf.float32)
    model = T.build_and_compile(cfg, steps_per_epoch=args.steps)

    n = args.batch_size
    one_batch = (x[:n], tf.one_hot(y[:n], 7), w[:n])
    in_memory = tf.data.Dataset.from_tensors(one_batch).repeat()
    teacher = None
    if args.distill:
        teacher = tf.constant(np.random.default_rng(0).dirichlet(np.ones(7), len(train)).astype(np.float32))
    pipeline = T.train_dataset(x, y, w, cfg, epoch=0, teacher=teacher).repeat()
    # Alternate the two and keep each one's best round, so warm-up and drift favour neither.
    rounds = [(images_per_second(model, in_memory, args.steps, n), images_per_second(model, pipeline, args.steps, n))
              for _ in range(args.rounds)]
    mem, real = max(r[0] for r in rounds), max(r[1] for r in rounds)
    cost = 1 - real / mem
    print(f"VGG16 width {args.width}, batch {n}, {policy}, erase {args.erase}, distill {args.distill}, "
          f"best of {args.rounds} rounds of {args.steps} timed steps")
    print(f"in-memory batch : {mem:8.1f} img/s")
    print(f"input pipeline  : {real:8.1f} img/s")
    print(f"pipeline cost   : {100 * cost:8.1f} %  (target <= 10 %)")
    return 0 if cost <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
