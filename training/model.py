"""VGG16 for 48x48 grayscale faces: 13 3x3 convs in five blocks, three dense layers."""

from __future__ import annotations

import keras
from keras import layers

from device.preprocess import CLASSES

BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


def build_vgg16(
    size: int = 48, width: float = 1.0, dense: int = 512, dropout: float = 0.5, name: str = "fer_vgg16"
) -> keras.Model:
    """VGG16 with batch norm; `width` scales every layer (tests train a narrow copy).

    Pools use 'same' padding so the last block keeps a 2x2 map instead of dropping
    a border of the 3x3 one; the head is 512-wide since ImageNet's 4096 is pointless
    on a 2x2x512 map.
    """
    inputs = keras.Input((size, size, 1), name="face")
    x = inputs
    for b, (filters, convs) in enumerate(BLOCKS, start=1):
        for c in range(1, convs + 1):
            x = layers.Conv2D(
                max(4, int(filters * width)), 3, padding="same", use_bias=False,
                kernel_initializer="he_normal", name=f"block{b}_conv{c}",
            )(x)
            x = layers.BatchNormalization(name=f"block{b}_bn{c}")(x)
            x = layers.ReLU(name=f"block{b}_relu{c}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"block{b}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    for i in (1, 2):
        x = layers.Dense(max(8, int(dense * width)), use_bias=False, kernel_initializer="he_normal", name=f"fc{i}")(x)
        x = layers.BatchNormalization(name=f"fc{i}_bn")(x)
        x = layers.ReLU(name=f"fc{i}_relu")(x)
        x = layers.Dropout(dropout, name=f"fc{i}_dropout")(x)  # after this BN; the next fc's BN sees it
    outputs = layers.Dense(len(CLASSES), activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)
