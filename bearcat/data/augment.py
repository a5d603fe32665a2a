"""Training-time augmentation: albumentations transforms listed as `_target_` nodes in
conf/augmentation/*.yaml, composed into one function that tf.data runs in parallel on the
training split only (uint8 image in, uint8 image of the same shape out)."""
from __future__ import annotations

import copy
import random
import threading

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf


class Augmenter:
    """Applies an albumentations pipeline to uint8 (H, W, C) images, one at a time.

    Call it on batches of (image, target) tensors inside `Dataset.map`, with the stream
    position of the batch's first image, for augmentation a seed repeats; `apply` is the
    NumPy version for one image (used by the preview)."""

    def __init__(self, transforms: list, seed: int | None = None, name: str = "augmentation"):
        import albumentations as A

        self.name, self.seed = name, seed
        self.compose = A.Compose(transforms, seed=seed)
        self._copies: dict[int, object] = {}  # thread id -> its own Compose (apply_at)

    def apply(self, image: np.ndarray, compose=None) -> np.ndarray:
        out = (self.compose if compose is None else compose)(image=image)["image"]
        if out.shape[:2] != image.shape[:2] or out.size != image.size:  # (a gray image may lose its channel axis)
            raise ValueError(f"{self.name}: a transform changed the image shape {image.shape} -> {out.shape}; "
                             "augmentations must keep the model's input size")
        return np.ascontiguousarray(out, dtype=np.uint8).reshape(image.shape)

    def apply_batch(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self.apply(img) for img in images]) if len(images) else images

    def apply_at(self, images: np.ndarray, first) -> np.ndarray:
        """`apply` to a batch, image k with the random draws of stream position `first + k` (and
        the seed): the same in every run, whichever of tf.data's threads gets the batch and
        whenever. One shared random state, drawn from by threads in whatever order they ran,
        made runs with augmentation differ from each other under the same seed."""
        ident = threading.get_ident()
        compose = self._copies.get(ident)
        if compose is None:  # each transform holds its random state: one copy per thread
            compose = self._copies[ident] = copy.deepcopy(self.compose)  # (threads only read self.compose)
        out = np.empty_like(images)
        for k, image in enumerate(images):
            if self.seed is not None:
                rng = np.random.default_rng([int(self.seed), int(first) + k])
                compose.set_random_state(rng, random.Random(int(rng.integers(2**63))))
            out[k] = self.apply(image, compose)
        return out

    def __call__(self, images, targets, first):
        """On a batch of (images, targets) tensors inside `Dataset.map`; `first`: the stream
        position of its first image. A call per batch, not per image: tf.data's overhead per
        call cost as much as the transforms themselves."""
        import tensorflow as tf

        out = tf.numpy_function(self.apply_at, [images, first], tf.uint8, stateful=False, name="augment")
        out.set_shape(images.shape)
        return out, targets


def build_transforms(nodes, where: str = "augmentation.transforms") -> list:
    """Instantiate each `_target_` node; an error names the node that failed."""
    if isinstance(nodes, (DictConfig, ListConfig)):
        nodes = OmegaConf.to_container(nodes, resolve=True)
    transforms = []
    for i, node in enumerate(nodes or []):
        if not isinstance(node, dict) or "_target_" not in node:
            raise ValueError(f"{where}[{i}]: expected a mapping with a _target_ (an albumentations transform), "
                             f"got {node!r}")
        try:
            transforms.append(instantiate(node))
        except Exception as err:  # Hydra wraps import and argument errors
            cause = err.__cause__ or err
            raise ValueError(f"{where}[{i}] ({node['_target_']}): cannot build it: {cause}") from None
    return transforms


def build_augment(cfg_aug, seed: int | None = None) -> Augmenter | None:
    """The training split's augmentation from the `augmentation` config group; None when
    it lists no transforms (then the pipeline skips the step)."""
    transforms = build_transforms(cfg_aug.get("transforms"))
    if not transforms:
        return None
    return Augmenter(transforms, seed=seed, name=f"augmentation={cfg_aug.get('name', '?')}")
