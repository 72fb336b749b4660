"""Layer factories shared by the zoo builders (PyTorch-equivalent defaults)."""

from __future__ import annotations

from keras import layers

# PyTorch's BatchNorm momentum 0.1 is Keras' 0.9; it also keeps moving
# statistics usable after short CPU runs (Keras' 0.99 needs ~500 steps).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv(filters: int, kernel_size: int = 3, strides: int = 1, name: str | None = None):
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def batch_norm(name: str | None = None):
    return layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )


def relu(name: str | None = None):
    return layers.ReLU(name=name)


def classifier_head(x, num_classes: int):
    """Global average pooling (the `embedding` tap) followed by the logits."""
    embedding = layers.GlobalAveragePooling2D(name="embedding")(x)
    return layers.Dense(num_classes, name="logits")(embedding)
