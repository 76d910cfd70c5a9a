"""How strongly each loss term pulls the network: gradient norms of L1, adversarial and feature matching.

The adversarial trainer's loss weights are only meaningful next to each other's gradients: a term whose
weighted gradient is 1 % of the L1's changes nothing. This loads one epoch of an adversarial run's
``--backup-dir`` (network and discriminator as the run left them), draws a few training batches the way
the run does, and prints each term's gradient norm over the network's weights, unweighted and weighted,
and the discriminator's mean logit on real photos and on the fill's hole cells.

    python benchmarks/gan_balance.py /work/inpaint-runs/adversarial/backup/epoch-000004 [--batches 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("epoch", type=Path, help="one epoch folder of an adversarial run's --backup-dir")
    parser.add_argument("--batches", type=int, default=2, help="training batches to measure")
    parser.add_argument("--adversarial-weight", type=float, default=None,
                        help="weigh with this instead of the run's first options (a resumed run may use others)")
    parser.add_argument("--feature-matching-weight", type=float, default=None, help="likewise")
    args = parser.parse_args()

    import tensorflow as tf
    from keras import ops

    from inpaint.trainer import train
    from inpaint.trainer.adversarial import adversarial_loss, feature_matching_loss, patch_holes
    from inpaint.trainer.pipeline import MaskedBatches
    from inpaint.trainer.resume import RUN_FILE, WEIGHTS_FILE
    from inpaint.trainer.sources import open_data

    run = json.loads((args.epoch.parent / RUN_FILE).read_text())
    config = train._config_from(run["config"], "unused")
    for option in ("adversarial_weight", "feature_matching_weight"):
        if getattr(args, option) is not None:
            setattr(config, option, getattr(args, option))
    model = train.compile_for_training(train.build_model(config), config)
    train.build_optimizers(model)
    model.load_weights(str(args.epoch / WEIGHTS_FILE))
    weights = train.adversarial_weights(config)
    batches = MaskedBatches.for_config(open_data(config.data, "memory", "auto"), config)
    generator, discriminator = model.generator, model.discriminator
    print(f"{args.epoch}: adversarial weight {weights.adversarial}, feature matching {weights.feature_matching}")
    print("| batch | crop | term | loss | grad norm | weighted | / L1's |")
    print("|---|---|---|---|---|---|---|")
    for index in range(args.batches):
        x, y = batches[index]
        target, hole = y[..., :3], y[..., 3:]
        with tf.GradientTape(persistent=True) as tape:
            prediction = generator(x, training=True)
            composited = prediction * hole + target * (1 - hole)
            real_logits, *real_features = discriminator(ops.concatenate([target, hole], -1))
            fake_logits, *fake_features = discriminator(ops.concatenate([composited, hole], -1))
            cells = patch_holes(hole)
            terms = {"l1": (model.l1_loss(y, prediction), 1.0),
                     "adversarial": (adversarial_loss(fake_logits, cells), weights.adversarial),
                     "feature matching": (feature_matching_loss(real_features, fake_features),
                                          weights.feature_matching)}
        norms = {name: float(tf.linalg.global_norm([g for g in tape.gradient(loss, generator.trainable_variables)
                                                    if g is not None]))
                 for name, (loss, _) in terms.items()}
        for name, (loss, weight) in terms.items():
            weighted = norms[name] * weight
            print(f"| {index} | {x.shape[1]} | {name} | {float(loss):.4f} | {norms[name]:.4g} | {weighted:.4g} | "
                  f"{weighted / norms['l1']:.0%} |")
        hole_logit = float(ops.sum(fake_logits * cells) / ops.maximum(ops.sum(cells), 1.0))
        print(f"| {index} | | discriminator logit: real {float(ops.mean(real_logits)):.2f}, fill's hole cells "
              f"{hole_logit:.2f} | | | | |")


if __name__ == "__main__":
    main()
