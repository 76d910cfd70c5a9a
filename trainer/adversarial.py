"""Adversarial fine-tuning: what makes fills sharp instead of the mean of all plausible fills.

An L1 loss alone converges to a blur. Here the generator (the inpainting network, unchanged) is
trained against a discriminator that sees the *composited* output with its hole mask, as in
DeepFill v2 and LaMa:

* ``build_discriminator``: a PatchGAN (each logit judges a ~70-px patch), spectrally normalised
  so it stays Lipschitz without a gradient penalty's second backward pass (cheap on a CPU).
* ``discriminator_loss``: non-saturating; real photos are real, and in a composited output only
  the patches that touch a hole are fake (LaMa's mask-as-fake-target: the known pixels are the
  photo's own, so calling them fake would teach nothing).
* ``generator_losses``: the hole-weighted L1 that keeps fills right, the non-saturating
  adversarial term on the hole patches that makes them look real, and feature matching (L1
  between the discriminator's features of the truth and of the fill) that steadies it.

The discriminator exists only here: ``AdversarialTrainer.generator`` is what is exported, so the
served graph, its signatures and its ONNX parity are those of the plain network. Start it from
trained L1 weights (ESRGAN's two stages): far fewer adversarial steps are needed than from scratch.
Its ``train_step`` is TensorFlow's (``tf.GradientTape``): the adversarial trainer needs the
TensorFlow backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers, ops

DISCRIMINATOR_PREFIX = "discriminator"
DISCRIMINATOR_LEVELS = 3  # stride-2 levels: a logit per 8x8 cell, each seeing ~70 px


@dataclass(frozen=True)
class AdversarialWeights:
    """Loss weights next to the hole-weighted L1 (whose own weight is 1)."""

    adversarial: float = 0.01
    feature_matching: float = 0.1
    discriminator_filters: int = 32
    discriminator_learning_rate: float = 1e-4

    @property
    def enabled(self) -> bool:
        return self.adversarial > 0 or self.feature_matching > 0


def build_discriminator(filters: int = 32, levels: int = DISCRIMINATOR_LEVELS) -> keras.Model:
    """PatchGAN on (RGB in [0, 1], hole mask): logits at 1/2**levels scale, plus each level's features.

    Spectral normalisation on every convolution; LeakyReLU(0.2); no normalisation layers (a batch
    statistic would tie the real and fake batches together).
    """
    inputs = keras.Input((None, None, 4), name=f"{DISCRIMINATOR_PREFIX}_image_and_mask")
    x = inputs * ops.convert_to_tensor([2.0, 2.0, 2.0, 1.0]) - ops.convert_to_tensor([1.0, 1.0, 1.0, 0.0])
    features = []
    for level in range(levels):
        conv = layers.Conv2D(filters * 2**level, 4, strides=2, padding="same",
                             name=f"{DISCRIMINATOR_PREFIX}_down{level}")
        x = layers.LeakyReLU(0.2)(layers.SpectralNormalization(conv, name=f"{DISCRIMINATOR_PREFIX}_sn{level}")(x))
        features.append(x)
    conv = layers.Conv2D(filters * 2**levels, 4, padding="same", name=f"{DISCRIMINATOR_PREFIX}_last")
    x = layers.LeakyReLU(0.2)(layers.SpectralNormalization(conv, name=f"{DISCRIMINATOR_PREFIX}_sn_last")(x))
    features.append(x)
    logits = layers.SpectralNormalization(
        layers.Conv2D(1, 4, padding="same", dtype="float32", name=f"{DISCRIMINATOR_PREFIX}_logits"),
        name=f"{DISCRIMINATOR_PREFIX}_sn_logits")(x)
    return keras.Model(inputs, [logits, *features], name=DISCRIMINATOR_PREFIX)


def patch_holes(hole, levels: int = DISCRIMINATOR_LEVELS):
    """1 for each logit whose cell holds any hole pixel, else 0: the hole mask max-pooled to the logits' grid
    (each "same"-padded stride-2 level rounds up, as the pooling does)."""
    return ops.max_pool(hole, 2**levels, 2**levels, padding="same")


def _masked_mean(values, weights):
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1.0)


def discriminator_loss(real_logits, fake_logits, fake_target):
    """Non-saturating: the truth is real; in the composited output the hole patches are fake, the rest real."""
    real = ops.mean(ops.softplus(-real_logits))
    fake = ops.mean(fake_target * ops.softplus(fake_logits) + (1.0 - fake_target) * ops.softplus(-fake_logits))
    return real + fake


def adversarial_loss(fake_logits, fake_target):
    """The generator's non-saturating term, over the patches that hold a hole."""
    return _masked_mean(ops.softplus(-fake_logits), fake_target)


def feature_matching_loss(real_features, fake_features):
    """Mean L1 between the discriminator's features of the truth and of the composited fill."""
    terms = [ops.mean(ops.abs(ops.stop_gradient(ops.cast(real, "float32")) - ops.cast(fake, "float32")))
             for real, fake in zip(real_features, fake_features)]
    return ops.sum(ops.stack(terms)) / len(terms)


class AdversarialTrainer(keras.Model):
    """The generator trained against ``discriminator``; calling it runs the generator alone.

    ``fit`` data is the plain trainer's: ``x`` = (holes zeroed RGB, mask), ``y`` = (truth RGB, mask).
    """

    METRIC_NAMES = ("loss", "l1", "adversarial", "feature_matching", "discriminator")

    def __init__(self, generator: keras.Model, discriminator: keras.Model, l1_loss, weights: AdversarialWeights,
                 **kwargs):
        super().__init__(name="adversarial_trainer", **kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.l1_loss = l1_loss
        self.loss_weights_ = weights
        self.trackers = [keras.metrics.Mean(name=name) for name in self.METRIC_NAMES]
        self.discriminator_optimizer = None
        self.built = True  # both networks are functional models, built on construction

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    def compile(self, optimizer, discriminator_optimizer, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.discriminator_optimizer = discriminator_optimizer

    def build_optimizers(self) -> None:
        """Each optimizer built on its own network's variables, ready for a backup's restore."""
        self.optimizer.build(self.generator.trainable_variables)
        self.discriminator_optimizer.build(self.discriminator.trainable_variables)

    @property
    def metrics(self):
        return self.trackers

    def train_step(self, data):
        import tensorflow as tf

        x, y = data[0], data[1]
        target, hole = ops.cast(y[..., :3], "float32"), ops.cast(y[..., 3:], "float32")
        weights = self.loss_weights_
        with tf.GradientTape(persistent=True) as tape:
            prediction = ops.cast(self.generator(x, training=True), "float32")
            composited = prediction * hole + target * (1.0 - hole)
            real_logits, *real_features = self.discriminator(ops.concatenate([target, hole], -1), training=True)
            fake_logits, *fake_features = self.discriminator(ops.concatenate([composited, hole], -1), training=True)
            real_logits, fake_logits = ops.cast(real_logits, "float32"), ops.cast(fake_logits, "float32")
            fake_target = patch_holes(hole)
            l1 = self.l1_loss(y, prediction)
            adversarial = adversarial_loss(fake_logits, fake_target)
            matching = feature_matching_loss(real_features, fake_features)
            generator_loss = l1 + weights.adversarial * adversarial + weights.feature_matching * matching
            critic_loss = discriminator_loss(real_logits, fake_logits, fake_target)
        generator_variables = self.generator.trainable_variables
        discriminator_variables = self.discriminator.trainable_variables
        self.optimizer.apply(tape.gradient(generator_loss, generator_variables), generator_variables)
        self.discriminator_optimizer.apply(tape.gradient(critic_loss, discriminator_variables),
                                           discriminator_variables)
        del tape
        for tracker, value in zip(self.trackers, (generator_loss, l1, adversarial, matching, critic_loss)):
            tracker.update_state(value)
        return {tracker.name: tracker.result() for tracker in self.trackers}


def generator_of(model: keras.Model) -> keras.Model:
    """The network that is exported: the trainer's generator, or the model itself when trained with L1 alone."""
    return model.generator if isinstance(model, AdversarialTrainer) else model
