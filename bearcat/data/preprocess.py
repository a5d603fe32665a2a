"""The one preprocessing path: training, evaluation, export and serving all call
`preprocess` so a served model never sees pixels prepared differently from training.

Output is uint8 (height, width, channels); scaling to [0, 1] happens inside the model
(a Rescaling layer), so exported models take the same uint8 pixels.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, ImageSequence

from bearcat.checks import is_number, is_whole_number, whole_setting

# Refuse decompression bombs: no captcha needs more than this many pixels.
DEFAULT_MAX_PIXELS = 20_000_000


# "min" keeps pale coloured text dark: yellow (255, 255, 0) is luma 226, nearly the white of
# the background, but its darkest channel is 0.
GRAY_MODES = ("luma", "min")

# How the frames of an animated image (GIF, APNG, WebP) become one picture. Captchas that
# blink or type their characters show only some of them in any one frame: "darkest" (dark text
# on a light ground) or "lightest" (light text on a dark ground) gathers them; "median" keeps
# what most frames show and drops noise that moves from frame to frame.
FRAME_MODES = ("first", "darkest", "lightest", "median")


class ImageError(ValueError):
    """An image that cannot be used; the message names the file."""


@dataclass(frozen=True)
class PreprocessConfig:
    height: int = 48          # model input height, pixels
    width: int = 128          # model input width, pixels
    channels: int = 1         # 1 = grayscale, 3 = RGB
    gray: str = "luma"        # channels=1: "luma" (PIL's weighted grey) | "min" (each pixel's darkest channel)
    gamma: float = 1.0        # pixel = 255 * (pixel / 255) ** gamma; above 1 darkens pale strokes (1 = off)
    threshold: int | None = None  # binarise grayscale at this level (0-255), after gamma; None = off
    pad_value: int = 128      # grey used to pad to the input size
    frames: str = "first"     # animated images: "first" frame only | "darkest" | "lightest" | "median" of every frame
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self):
        # Settings are checked here, once: a bad setting must never look like a bad image
        # (a data check would quarantine every file for it).
        for key, low, high in (("height", 1, None), ("width", 1, None), ("pad_value", 0, 255),
                               ("max_pixels", 1, None), ("threshold", 0, 255)):
            value = getattr(self, key)
            if key == "threshold" and value is None:
                continue
            whole_setting(f"preprocess.{key}", value, low, high)
        if self.frames not in FRAME_MODES:
            raise ValueError(f"preprocess.frames={self.frames!r}: choose one of {', '.join(FRAME_MODES)}")
        if self.gray not in GRAY_MODES:
            raise ValueError(f"preprocess.gray={self.gray!r}: choose one of {', '.join(GRAY_MODES)}")
        if not is_whole_number(self.channels) or self.channels not in (1, 3):
            raise ValueError(f"preprocess.channels={self.channels!r}: use 1 (grayscale) or 3 (RGB)")
        if self.threshold is not None and self.channels != 1:
            raise ValueError("preprocess.threshold needs preprocess.channels=1")
        if not is_number(self.gamma) or not self.gamma > 0:
            raise ValueError(f"preprocess.gamma={self.gamma!r}: a number above 0 (1 = off)")

    @classmethod
    def from_dict(cls, d) -> "PreprocessConfig":
        keys = cls.__dataclass_fields__
        return cls(**{k: (None if v is None else v) for k, v in dict(d).items() if k in keys})

    def to_dict(self) -> dict:
        return asdict(self)


def _label(source, name: str | None) -> str:
    """What error messages call an image: its name, its path, or what it is."""
    if name:
        return name
    if isinstance(source, (str, Path)):
        return str(source)
    return "<image>" if isinstance(source, Image.Image) else "<bytes>"


def load_image(source, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> Image.Image:
    """Open and fully decode an image from a path, bytes or PIL image."""
    if isinstance(source, Image.Image):
        return source
    label = _label(source, name)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageError(f"{label}: empty image (0 bytes)")
            img = Image.open(io.BytesIO(source))
        else:
            if Path(source).stat().st_size == 0:
                raise ImageError(f"{label}: empty image file (0 bytes)")
            img = Image.open(source)
        try:
            if img.width * img.height > max_pixels:
                raise ImageError(f"{label}: {img.width}x{img.height} pixels exceeds the limit of {max_pixels}")
            img.load()  # decode everything now: a truncated file fails here, not in training
        except BaseException:
            img.close()  # its file now, not at garbage collection (a check of a folder meets many bad files)
            raise
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except Exception as err:  # PIL raises many types for corrupt data
        raise ImageError(f"{label}: cannot decode image ({type(err).__name__}: {err})") from None
    return img


def _to_mode(img: Image.Image, channels: int, gray: str = "luma") -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale to 8-bit, don't clip
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray((arr * 255.0 / top).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info:
        # Transparent pixels become white, as a browser would show them.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    if channels == 1 and gray == "min" and img.mode not in ("L", "1"):
        return Image.fromarray(np.asarray(img.convert("RGB")).min(axis=2))
    return img.convert("L" if channels == 1 else "RGB")


def merge_frames(img: Image.Image, how: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                 name: str | None = None) -> Image.Image:
    """An animated image's frames, each shown on white as a browser shows it, merged pixel
    by pixel (`how`: a FRAME_MODES entry) into one RGB image. A still image, or
    how="first", is returned as it is."""
    if how == "first":
        return img
    label = _label(img, name)
    try:
        count = getattr(img, "n_frames", 1)  # a GIF is read to its end to count them
    except Exception as err:
        raise ImageError(f"{label}: cannot count its frames ({type(err).__name__}: {err})") from None
    if count <= 1:
        return img
    if img.width * img.height * count > max_pixels:  # every frame is decoded: the limit covers them all
        raise ImageError(f"{label}: {count} frames of {img.width}x{img.height} pixels exceed the limit of {max_pixels}")
    frames = []
    try:
        for frame in ImageSequence.Iterator(img):
            frames.append(np.asarray(_to_mode(ImageOps.exif_transpose(frame), 3)))
    except Exception as err:
        raise ImageError(f"{label}: cannot decode frame {len(frames) + 1} of {count} "
                         f"({type(err).__name__}: {err})") from None
    stack = np.stack(frames)
    if how == "darkest":
        merged = stack.min(axis=0)
    elif how == "lightest":
        merged = stack.max(axis=0)
    else:
        merged = np.rint(np.median(stack, axis=0)).astype(np.uint8)
    return Image.fromarray(merged, "RGB")


@lru_cache(maxsize=8)
def _gamma_table(gamma: float) -> list[int]:
    """The 256-entry curve, made once per gamma rather than for every image."""
    return [round(255 * (p / 255) ** gamma) for p in range(256)]


def letterbox(width: int, height: int, cfg: PreprocessConfig):
    """Where an image of this size lands on the input canvas: ((new width, new height),
    (left, top) offset, scale). Detection maps boxes with the same numbers."""
    scale = min(cfg.width / width, cfg.height / height, 1.0)
    size = (max(1, round(width * scale)), max(1, round(height * scale))) if scale < 1.0 else (width, height)
    return size, ((cfg.width - size[0]) // 2, (cfg.height - size[1]) // 2), scale


def preprocess(source, cfg: PreprocessConfig, name: str | None = None) -> np.ndarray:
    """Image -> uint8 array (cfg.height, cfg.width, cfg.channels).

    Merge an animated image's frames (`frames`), keep the aspect ratio, scale down only if
    larger than the input size, centre on a grey (`pad_value`) canvas, optionally grayscale
    (luma or darkest channel), gamma and threshold.
    """
    img = merge_frames(load_image(source, cfg.max_pixels, name), cfg.frames, cfg.max_pixels, name or _label(source, None))
    try:
        img = _to_mode(ImageOps.exif_transpose(img), cfg.channels, cfg.gray)
        size, offset, _ = letterbox(img.width, img.height, cfg)
        if size != img.size:
            img = img.resize(size, Image.BILINEAR)
    except Exception as err:  # e.g. a LAB or CMYK-with-odd-profile file PIL decodes but cannot convert
        raise ImageError(f"{_label(source, name)}: cannot convert image ({type(err).__name__}: {err})") from None
    if cfg.gamma != 1.0:  # the same table for each channel, so grey and RGB alike
        img = img.point(_gamma_table(cfg.gamma) * len(img.getbands()))
    if cfg.threshold is not None:
        img = img.point(lambda p: 255 if p >= cfg.threshold else 0)
    fill = cfg.pad_value if cfg.channels == 1 else (cfg.pad_value,) * 3
    canvas = Image.new(img.mode, (cfg.width, cfg.height), fill)
    canvas.paste(img, offset)
    arr = np.asarray(canvas, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr
