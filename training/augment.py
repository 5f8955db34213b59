"""Batched, stateless augmentation: the same (seed, epoch, batch) always gives the same images,
which is what lets `--resume` continue a run exactly."""

from __future__ import annotations

import math

import tensorflow as tf


def augment(x: tf.Tensor, seed: tf.Tensor, max_rot_deg: float = 10.0, max_scale: float = 0.1,
            max_shift: float = 0.1, brightness: float = 0.4, contrast: float = 0.2,
            erase: float = 0.0) -> tf.Tensor:
    """Random flip, rotation, scale, shift (one affine warp), brightness/contrast, and with
    probability `erase` one random rectangle erased (see `erase_boxes`).

    `x` is a preprocessed batch (N, H, W, 1); `seed` a stateless seed of shape (2,).
    """
    n = tf.shape(x)[0]
    h = tf.cast(tf.shape(x)[1], tf.float32)
    w = tf.cast(tf.shape(x)[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 7)
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
    x = (x - mean) * gain + mean + bias
    return erase_boxes(x, seeds[6], erase) if erase > 0 else x


def erase_boxes(x: tf.Tensor, seed: tf.Tensor, p: float, area: tuple[float, float] = (0.02, 0.33),
                ratio: tuple[float, float] = (0.3, 3.3)) -> tf.Tensor:
    """Random erasing (Zhong et al., 2017): with probability `p` a rectangle of `area` of the
    face, aspect `ratio`, set to 0 (mid grey after preprocessing). A face with an eye or the
    mouth hidden must still be read from the rest, which curbs the overfitting VGG16 shows on
    FER-2013's 28,709 faces."""
    n = tf.shape(x)[0]
    h = tf.cast(tf.shape(x)[1], tf.float32)
    w = tf.cast(tf.shape(x)[2], tf.float32)
    u = tf.random.stateless_uniform([n, 5], seed)
    s = (area[0] + u[:, 0] * (area[1] - area[0])) * h * w
    r = tf.exp(math.log(ratio[0]) + u[:, 1] * math.log(ratio[1] / ratio[0]))
    bh = tf.minimum(tf.sqrt(s / r), h)
    bw = tf.minimum(tf.sqrt(s * r), w)
    y0 = u[:, 2] * (h - bh)
    x0 = u[:, 3] * (w - bw)
    rows = tf.range(h)[None, :, None]
    cols = tf.range(w)[None, None, :]
    inside = ((rows >= y0[:, None, None]) & (rows < (y0 + bh)[:, None, None])
              & (cols >= x0[:, None, None]) & (cols < (x0 + bw)[:, None, None])
              & (u[:, 4] < p)[:, None, None])
    return tf.where(inside[..., None], tf.zeros_like(x), x)


def mix_up(seed: tf.Tensor, alpha: float, *batches: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """Mixup (Zhang et al. 2018): face k of each batch blended with face n-1-k (the batch reversed),
    weight lambda ~ Beta(alpha, alpha) per face, and its targets and sample weight blended alike. With
    teachers reading the blend (function matching, Beyer et al. 2022) the student is taught between
    faces too, not only on them."""
    n = tf.shape(batches[0])[0]
    g = tf.random.stateless_gamma([2, n], seed, alpha=alpha)
    lam = tf.math.divide_no_nan(g[0], g[0] + g[1])  # both draws can underflow to 0 at a small alpha

    def blend(t: tf.Tensor) -> tf.Tensor:
        share = tf.reshape(tf.cast(lam, t.dtype), tf.concat([[n], tf.ones([tf.rank(t) - 1], tf.int32)], 0))
        return share * t + (1 - share) * tf.reverse(t, [0])

    return tuple(blend(t) for t in batches)
