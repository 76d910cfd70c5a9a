"""Does the streaming input keep up with training? Its examples/s on its own next to the model's step rate.

    python benchmarks/input_pipeline.py [--data photos] [--batch-size 8] [--image-size 96] [--steps 40]

Rows (examples/s, same batch size and crop recipe, the trainer's default model unless --depth/--base-filters):

* input pipeline alone: the ``tf.data`` stream (``trainer/stream.py``: read, decode, multi-scale crop, mask,
  batch, AUTOTUNE parallelism) pulled as fast as it goes, no model;
* in-memory loader alone: ``MaskedBatches`` (decoded photos in memory, ``--workers`` threads), for comparison;
* train step alone: the model's training step on batches already in memory (each crop side once, cycled);
* training fed by the stream: ``fit`` on the stream, what a run gets.

The input keeps up when its rate alone is well above the step rate. On a CPU both share the cores, so the
last row is below the smaller of the two; on a GPU the input runs on the CPU beside the device.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def rate(seconds: float, examples: int) -> str:
    return f"{examples / seconds:,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="photos", help="--data spec (photos, samples, a folder, a glob, TFRecords)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--base-filters", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=6, help="untimed batches first (tracing, pipeline fill)")
    parser.add_argument("--workers", type=int, default=1, help="threads of the in-memory loader")
    parser.add_argument("--no-deterministic", dest="deterministic", action="store_false")
    parser.add_argument("--skip-memory", action="store_true", help="skip the in-memory row (large --data)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras
    import tensorflow as tf
    from inpaint.trainer.data import Dataset
    from inpaint.trainer.model import HoleWeightedL1
    from inpaint.trainer.pipeline import MaskedBatches, crop_sizes
    from inpaint.trainer.sources import open_data
    from inpaint.trainer.stream import Layout, training_batches
    from inpaint.trainer.train import TrainConfig, build_model

    config = TrainConfig(data=args.data, image_size=args.image_size, depth=args.depth, base_filters=args.base_filters,
                         batch_size=args.batch_size, seed=args.seed, workers=args.workers,
                         deterministic=args.deterministic)
    sizes = crop_sizes(config.image_size, 2**config.depth)
    source = open_data(args.data, "stream")
    count = len(source.names["train"]) if source.format == "images" else len(source.train)
    rows = []

    def stream(steps: int):
        layout = Layout(config.batch_size, sizes)
        return training_batches(source, layout, mask_kind=config.mask_kind, seed=config.seed,
                                deterministic=config.deterministic).take(steps)

    # 1. The stream alone (a finite take: the pipeline's threads end with it).
    started = None
    for index, _ in enumerate(stream(args.warmup + args.steps)):
        if index == args.warmup - 1:
            started = time.perf_counter()
    seconds = time.perf_counter() - started
    rows.append(("input pipeline alone (tf.data stream, AUTOTUNE)", rate(seconds, args.steps * config.batch_size)))

    # 2. The in-memory loader alone.
    if not args.skip_memory:
        memory = open_data(args.data, "memory")
        if isinstance(memory, Dataset):
            batches = MaskedBatches.for_config(memory, config)
            batches.steps = args.steps
            started = time.perf_counter()
            for index in range(args.steps):
                batches[index]
            seconds = time.perf_counter() - started
            rows.append((f"in-memory loader alone (MaskedBatches, {args.workers} thread)",
                         rate(seconds, args.steps * config.batch_size)))

    # 3. The training step alone, on batches already drawn (one per crop side).
    keras.utils.set_random_seed(config.seed)
    model = build_model(config)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=HoleWeightedL1(config.hole_weight))
    cached = [(x, y) for x, y in stream(len(sizes))]
    for step in range(args.warmup):
        model.train_on_batch(*cached[step % len(cached)])
    started = time.perf_counter()
    for step in range(args.steps):
        model.train_on_batch(*cached[step % len(cached)])
    seconds = time.perf_counter() - started
    rows.append((f"train step alone ({model.count_params():,} parameters, batches in memory)",
                 rate(seconds, args.steps * config.batch_size)))

    # 4. Training fed by the stream, as inpaint-train runs it.
    data = stream(args.warmup + args.steps).repeat()
    model.fit(data, epochs=1, steps_per_epoch=args.warmup, verbose=0, shuffle=False)
    started = time.perf_counter()
    model.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0, shuffle=False)
    seconds = time.perf_counter() - started
    rows.append(("training fed by the stream (fit)", rate(seconds, args.steps * config.batch_size)))

    devices = ", ".join(d.device_type for d in tf.config.list_logical_devices()) or "CPU"
    print(f"data {args.data} ({source.format}, {count} training files), batch {config.batch_size}, crop sides "
          f"{'/'.join(map(str, sizes))}, {args.steps} timed batches, devices: {devices}, {os.cpu_count()} CPUs\n")
    print("| what | examples/s |")
    print("|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
