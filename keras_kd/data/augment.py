"""Seeded, reproducible augmentation: the view of example `index` in epoch
`epoch` follows from `(seed, epoch, index)` alone.

Fast Knowledge Distillation (Shen & Xing, ECCV 2022) stores a teacher's
outputs for the exact augmented views a student will see and replays them.
That needs views that do not depend on shuffling, batching, the number of
replicas or whether the run was resumed: here every random parameter of a
view is drawn with a stateless generator keyed by `(seed, epoch, index)`.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from keras_kd.checks import check_count, check_flag

#: Salts separating the random streams of the augmentation parameters and of shuffling.
_VIEW_STREAM, _SHUFFLE_STREAM = 0x5EED, 0x5F1E


def _key(seed: int, stream: int, *data) -> tf.Tensor:
    """A stateless RNG key derived from `seed`, a stream salt and integers."""
    key = tf.constant([seed, stream], tf.int64)
    for value in data:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))
    return key


def epoch_order(num_examples: int, seed: int, epoch) -> tf.Tensor:
    """The example order of one epoch: a permutation of `range(num_examples)`
    that depends only on `(seed, epoch)`."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(num_examples, dtype=tf.int64), seed=_key(seed, _SHUFFLE_STREAM, epoch)
    )


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Zero-pad-and-crop plus horizontal flip, reproducible per `(epoch, index)`.

    `params(epoch, index)` returns every random choice of one view (a dict of
    tensors), and `apply(image, params)` is a pure function of them, so a view
    can be recomputed anywhere: by the online pipeline, by the teacher-output
    cache when it is built, after a resume, on any replica. New transforms
    (mixup, cutmix: a partner index and a mixing weight) are further entries of
    `params` drawn from the same key.

    Args:
        pad: pixels of zero padding before the random crop back to size (0: no crop).
        flip: random horizontal flip with probability 1/2.
        seed: the seed every view's parameters derive from.

    Example:

    >>> import tensorflow as tf
    >>> augmentation = Augmentation(pad=2, flip=True, seed=7)
    >>> image = tf.reshape(tf.range(16.0), (4, 4, 1))
    >>> a = augmentation.view(image, epoch=3, index=11)
    >>> b = augmentation.view(image, epoch=3, index=11)
    >>> bool(tf.reduce_all(a == b)), a.shape
    (True, TensorShape([4, 4, 1]))
    """

    pad: int = 4
    flip: bool = True
    seed: int = 0

    def __post_init__(self):
        # frozen: the checked values (Python int / bool) are stored with object.__setattr__
        object.__setattr__(self, "pad", check_count("pad", self.pad))
        object.__setattr__(self, "flip", check_flag("flip", self.flip))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"Augmentation `seed` must be an integer, got {self.seed!r}.")

    def params(self, epoch, index) -> dict[str, tf.Tensor]:
        """The random choices of the view of example `index` in `epoch`:
        `offset` (the crop's top-left corner in the padded image) and `flip`."""
        key = _key(self.seed, _VIEW_STREAM, epoch, index)
        crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        offset = tf.random.stateless_uniform([2], crop_key, minval=0, maxval=2 * self.pad + 1, dtype=tf.int32)
        flip = tf.random.stateless_uniform([], flip_key) < 0.5 if self.flip else tf.constant(False)
        return {"offset": offset, "flip": flip}

    def apply(self, image: tf.Tensor, params: dict[str, tf.Tensor]) -> tf.Tensor:
        """The view of one `(H, W, C)` image under `params`."""
        if self.pad:
            shape = tf.shape(image)
            padded = tf.pad(image, [[self.pad, self.pad], [self.pad, self.pad], [0, 0]])
            image = tf.slice(padded, tf.concat([params["offset"], [0]], 0), shape)
        if self.flip:
            image = tf.cond(params["flip"], lambda: tf.reverse(image, axis=[1]), lambda: image)
        return image

    def view(self, image: tf.Tensor, epoch, index) -> tf.Tensor:
        """`apply(image, params(epoch, index))`."""
        return self.apply(image, self.params(epoch, index))

    def get_config(self) -> dict:
        """What identifies the views (the teacher-output cache compares it)."""
        return {"kind": "pad_crop_flip", "pad": self.pad, "flip": self.flip, "seed": self.seed}
