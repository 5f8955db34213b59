"""Batched, stateless augmentation: the same (seed, epoch, batch) always gives the same images,
which is what lets `--resume` continue a run exactly."""

from __future__ import annotations

import math

import tensorflow as tf


def augment(x: tf.Tensor, seed: tf.Tensor, max_rot_deg: float = 10.0, max_scale: float = 0.1,
            max_shift: float = 0.1, brightness: float = 0.4, contrast: float = 0.2) -> tf.Tensor:
    """Random flip, rotation, scale, shift (one affine warp) and brightness/contrast.

    `x` is a preprocessed batch (N, H, W, 1); `seed` a stateless seed of shape (2,).
    """
    n = tf.shape(x)[0]
    h = tf.cast(tf.shape(x)[1], tf.float32)
    w = tf.cast(tf.shape(x)[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 6)
    uni = lambda i, lo, hi: tf.random.stateless_uniform([n], seeds[i], lo, hi)  # noqa: E731
    angle = uni(0, -max_rot_deg, max_rot_deg) * (math.pi / 180.0)
    scale = uni(1, 1.0 - max_scale, 1.0 + max_scale)
    flip = tf.where(uni(2, 0.0, 1.0) < 0.5, -1.0, 1.0)
    shift = tf.random.stateless_uniform([n, 2], seeds[3], -max_shift, max_shift) * tf.stack([w, h])
    # Output pixel (u, v) samples input (a0*u + a1*v + a2, b0*u + b1*v + b2): rotate and
    # scale about the centre, mirror x, then shift.
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    cx, cy = (w - 1) / 2, (h - 1) / 2
    a0, a1 = cos * flip, -sin * flip
    b0, b1 = sin, cos
    a2 = cx - a0 * cx - a1 * cy + shift[:, 0]
    b2 = cy - b0 * cx - b1 * cy + shift[:, 1]
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=transforms, output_shape=tf.shape(x)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
    )
    gain = uni(4, 1.0 - contrast, 1.0 + contrast)[:, None, None, None]
    bias = uni(5, -brightness, brightness)[:, None, None, None]
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return (x - mean) * gain + mean + bias
