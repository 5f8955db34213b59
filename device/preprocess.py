"""The one preprocessing contract shared by training, conversion and the device.

Training calls it on FER-2013 faces with the spec its export then writes into the model
manifest; conversion and the device call it with the spec read from that manifest, so the
two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Fixed class order: index i of every model output is CLASSES[i].
CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
DISPLAY_NAMES: tuple[str, ...] = (
    "Angry",
    "Disgusted",
    "Fearful",
    "Happy",
    "Neutral",
    "Sad",
    "Surprised",
)


def _whole(v: object) -> bool:
    """A JSON integer, as a manifest must give a size or shift: int() would read 48.9 as 48 and true as 1."""
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: object) -> bool:
    """A JSON number: float() would read "0.5" and true as numbers, another computation than the one scored."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class View:
    """One test-time view of a face: zoomed in about its centre, shifted by whole pixels (edge
    pixels repeated), then maybe mirrored. An expression reads the same in every view, so the
    average of several views' probabilities is steadier than any one of them."""

    zoom: float = 1.0
    shift: tuple[int, int] = (0, 0)  # (dx, dy): the face moves right and down
    mirror: bool = False

    def apply(self, faces: np.ndarray) -> np.ndarray:
        """uint8 faces (N, S, S) -> this view of each, same shape."""
        size = faces.shape[1]
        if self.zoom != 1.0:
            crop = int(round(size / self.zoom))
            o = (size - crop) // 2
            faces = np.stack([resize_square(f[o : o + crop, o : o + crop], size) for f in faces])
        dx, dy = self.shift
        if dx or dy:
            p = max(abs(dx), abs(dy))
            padded = np.pad(faces, ((0, 0), (p, p), (p, p)), mode="edge")
            faces = padded[:, p - dy : p - dy + size, p - dx : p - dx + size]
        return faces[:, :, ::-1] if self.mirror else faces

    def describe(self) -> str:
        dx, dy = self.shift
        moves = ([f"{abs(dx)} px {'right' if dx > 0 else 'left'}"] if dx else []) + (
            [f"{abs(dy)} px {'down' if dy > 0 else 'up'}"] if dy else [])
        parts = ([f"zoomed {self.zoom:g}x"] if self.zoom != 1.0 else []) + (
            [f"shifted {' and '.join(moves)}"] if moves else []) + (["mirrored"] if self.mirror else [])
        return ", ".join(parts) or "as is"

    def to_dict(self) -> dict:
        return {"zoom": self.zoom, "shift": list(self.shift), "mirror": self.mirror}

    @classmethod
    def from_dict(cls, d: dict) -> View:
        # a misspelt key ("flip"), a "false" in quotes or a shift of "12" (read as [1, 2]) would classify another
        # view than the one scored
        if set(d) - {"zoom", "shift", "mirror"} or not isinstance(d.get("mirror", False), bool):
            raise ValueError(f"invalid view {d!r} (keys zoom, shift and mirror, mirror true or false)")
        zoom, shift = d.get("zoom", 1.0), d.get("shift", [0, 0])
        if not _number(zoom) or not isinstance(shift, list) or not all(map(_whole, shift)):
            raise ValueError(f"invalid view {d!r} (zoom a number, shift a list [dx, dy] of whole pixels)")
        try:
            view = cls(float(zoom), tuple(shift), d.get("mirror", False))
        except OverflowError:  # a zoom of 10**400, too large for a float
            raise ValueError(f"invalid view {d!r}") from None
        if not 1.0 <= view.zoom <= 2.0 or len(view.shift) != 2 or max(map(abs, view.shift)) > 8:
            raise ValueError(f"invalid view {d!r} (zoom 1 to 2, shift [dx, dy] of at most 8 px)")
        return view


ONE_VIEW: tuple[View, ...] = (View(),)
# The face and its mirror image. Six views (also shifted 2 px and zoomed 1.1x, each mirrored)
# scored 69.55 % on PublicTest on the cycle-8 model against 68.88 % for these two, but on the
# cycle-9 model 69.80 % against 69.63 %: mostly PublicTest noise, for three times the compute.
DEVICE_VIEWS: tuple[View, ...] = (View(), View(mirror=True))


@dataclass(frozen=True)
class InputSpec:
    """How a face becomes a model input: ``(pixel * scale - mean) / std``, for each of `views`;
    the views' probability vectors are averaged, then multiplied by `class_scale` (when given)
    and renormalized. Training weights class c's loss by ~count^-p so rare expressions are
    learned; that tilts the network's probabilities by the same factors, and a class_scale of
    ~count^p tilts them back to what is most likely (logit adjustment, Menon et al. 2021)."""

    size: int = 48
    color_mode: str = "grayscale"
    scale: float = 1.0 / 255.0
    mean: float = 0.5
    std: float = 0.25
    views: tuple[View, ...] = DEVICE_VIEWS
    class_scale: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return {
            "size": self.size,
            "color_mode": self.color_mode,
            "scale": self.scale,
            "mean": self.mean,
            "std": self.std,
            "views": [v.to_dict() for v in self.views],
        } | ({"class_scale": list(self.class_scale)} if self.class_scale else {})

    @classmethod
    def from_dict(cls, d: dict, needs_views: bool = False) -> InputSpec:
        """`needs_views`: a format that always writes them (manifest schema 2), so one without lost them.
        Values are taken as JSON types them, never coerced: a size of 48.9 read as 48, or a class_scale of
        "1111511" as seven factors, would compute another thing than the one scored."""
        if "views" in d:
            views = tuple(View.from_dict(v) for v in d["views"])
        elif needs_views:
            raise KeyError("input.views")
        else:  # manifests before views: face and mirror image, or (before that) one view
            views = (View(), View(mirror=True)) if d.get("mirror") else ONE_VIEW
        size, class_scale = d["size"], d.get("class_scale", [])
        if not isinstance(class_scale, list) or not all(map(_number, class_scale)):
            raise ValueError(f"invalid class_scale {class_scale!r} (a list of positive numbers, one per class)")
        if not _whole(size) or not all(_number(d[k]) for k in ("scale", "mean", "std")):
            raise ValueError(f"invalid input spec {d!r} (size a whole number of pixels; scale, mean and std numbers)")
        try:
            spec = cls(
                size=size,
                color_mode=str(d["color_mode"]),
                scale=float(d["scale"]),
                mean=float(d["mean"]),
                std=float(d["std"]),
                views=views,
                class_scale=tuple(float(v) for v in class_scale),
            )
        except OverflowError:  # an integer too large for a float (10**400): a bad value as any other
            raise ValueError(f"invalid input spec {d!r}") from None
        if not all(0 < v < float("inf") for v in spec.class_scale):
            raise ValueError(f"invalid class_scale {spec.class_scale!r} (positive numbers, one per class)")
        if spec.color_mode != "grayscale":
            raise ValueError(f"unsupported color_mode {spec.color_mode!r} (only 'grayscale')")
        finite = all(abs(v) < float("inf") for v in (spec.scale, spec.mean, spec.std))  # NaN fails too
        # a scale of 0 makes every face one gray, a negative one its negative: both score, wrongly
        if spec.size < 8 or not finite or not spec.scale > 0 or not spec.std > 0 or not spec.views:
            raise ValueError(f"invalid input spec {d!r}")
        return spec

    def describe_views(self) -> str:
        """How a face is classified, for reports and the model card."""
        how = (f"one view ({self.views[0].describe()})" if len(self.views) == 1 else
               f"{len(self.views)} views averaged ({'; '.join(v.describe() for v in self.views)})")
        return how + (", then rescaled per class to undo the training's class weights" if self.class_scale else "")


DEFAULT_SPEC = InputSpec()


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return a 2-D uint8 gray image from gray, BGR or BGRA input (OpenCV's channel order)."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        bgr = image[..., :3].astype(np.float32)
        gray = bgr[..., 0] * 0.114 + bgr[..., 1] * 0.587 + bgr[..., 2] * 0.299
        return np.clip(gray + 0.5, 0, 255).astype(np.uint8)
    raise ValueError(f"expected a gray or BGR image, got shape {image.shape}")


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a 2-D uint8 face crop to size x size with PIL's bilinear filter (antialiased when shrinking;
    reducing_gap=2 box-averages large crops down first), so no cv2 is needed."""
    if gray.shape == (size, size):
        return gray
    from PIL import Image

    return np.asarray(Image.fromarray(gray).resize((size, size), Image.BILINEAR, reducing_gap=2.0))


def preprocess(faces: np.ndarray, spec: InputSpec = DEFAULT_SPEC) -> np.ndarray:
    """Map uint8 faces (N, size, size) or (size, size) to float32 (N, size, size, 1) model input."""
    faces = np.asarray(faces)
    if faces.ndim == 2:
        faces = faces[None]
    if faces.shape[1:] != (spec.size, spec.size):
        raise ValueError(f"faces must be {spec.size}x{spec.size}, got {faces.shape[1:]}")
    x = faces.astype(np.float32) * np.float32(spec.scale)
    x = (x - np.float32(spec.mean)) / np.float32(spec.std)
    return x[..., None]


def predict_faces(run: Callable[[np.ndarray], np.ndarray], faces: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Class probabilities (N, classes) for uint8 faces, `run` mapping model input to probabilities.

    Every view of `spec.views` of each face goes through `run` in one batch and the views'
    probabilities are averaged, then rescaled by `spec.class_scale` where it is given.
    """
    faces = np.asarray(faces)
    if faces.ndim == 2:
        faces = faces[None]
    if faces.shape[1:] != (spec.size, spec.size):
        raise ValueError(f"faces must be {spec.size}x{spec.size}, got {faces.shape[1:]}")
    y = run(np.concatenate([preprocess(view.apply(faces), spec) for view in spec.views]))
    p = y.reshape(len(spec.views), len(faces), -1).mean(0)
    if not spec.class_scale:
        return p
    if len(spec.class_scale) != p.shape[1]:
        raise ValueError(f"class_scale has {len(spec.class_scale)} values for {p.shape[1]} classes")
    p = p * np.asarray(spec.class_scale, dtype=p.dtype)
    return p / p.sum(axis=1, keepdims=True)
