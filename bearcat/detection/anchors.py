"""Anchors, box coding, target assignment and non-maximum suppression (NumPy).

Boxes are (x1, y1, x2, y2) in input-canvas pixels. Anchors are laid out level by level
(min_level..max_level), row by row, then per (scale, ratio): the same order in which the
model's heads flatten their outputs, so anchor i and output i always belong together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BACKGROUND = -1  # class target of an anchor that overlaps no object
IGNORE = -2      # class target of an anchor in the grey zone: no loss either way


@dataclass(frozen=True)
class AnchorConfig:
    min_level: int = 3          # finest feature level (stride 2**min_level pixels)
    max_level: int = 5          # coarsest feature level
    anchor_size: float = 4.0    # anchor side = anchor_size * stride (times each scale)
    scales: tuple = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    ratios: tuple = (1.0,)      # width / height of the anchors

    @property
    def per_cell(self) -> int:
        return len(self.scales) * len(self.ratios)

    def check(self, height: int, width: int):
        step = 2 ** self.max_level
        if height % step or width % step:
            raise ValueError(f"preprocess.height/width ({height}x{width}) must be multiples of "
                             f"2**mode.max_level = {step}; change the input size or mode.max_level")


def anchor_boxes(height: int, width: int, cfg: AnchorConfig) -> np.ndarray:
    """All anchors, shape (N, 4), as x1, y1, x2, y2."""
    cfg.check(height, width)
    out = []
    for level in range(cfg.min_level, cfg.max_level + 1):
        stride = 2 ** level
        ys, xs = np.meshgrid(np.arange(height // stride), np.arange(width // stride), indexing="ij")
        centres = np.stack([(xs + 0.5) * stride, (ys + 0.5) * stride], -1).reshape(-1, 1, 2)
        sizes = np.array([(cfg.anchor_size * stride * s * math.sqrt(r), cfg.anchor_size * stride * s / math.sqrt(r))
                          for s in cfg.scales for r in cfg.ratios]).reshape(1, -1, 2)
        boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], -1)
        out.append(boxes.reshape(-1, 4))
    return np.concatenate(out).astype(np.float32)


def _centre_size(boxes: np.ndarray) -> tuple[np.ndarray, ...]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + w / 2, boxes[..., 1] + h / 2, w, h


def encode_boxes(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Boxes -> regression targets (dx, dy, log dw, log dh) relative to their anchors."""
    cx, cy, w, h = _centre_size(boxes)
    acx, acy, aw, ah = _centre_size(anchors)
    return np.stack([(cx - acx) / aw, (cy - acy) / ah,
                     np.log(np.maximum(w, 1e-3) / aw), np.log(np.maximum(h, 1e-3) / ah)], -1).astype(np.float32)


def decode_boxes(deltas: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    acx, acy, aw, ah = _centre_size(anchors)
    cx = deltas[..., 0] * aw + acx
    cy = deltas[..., 1] * ah + acy
    w = np.exp(np.minimum(deltas[..., 2], 6.0)) * aw  # clamp: an untrained head must not overflow
    h = np.exp(np.minimum(deltas[..., 3], 6.0)) * ah
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4) -> (N, M)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def assign_targets(boxes: np.ndarray, classes: np.ndarray, anchors: np.ndarray,
                   positive_iou: float = 0.5, negative_iou: float = 0.4) -> np.ndarray:
    """Training target per anchor, shape (N, 5): 4 box deltas + class id (or BACKGROUND /
    IGNORE). Every object also claims its best anchor, so a small or oddly shaped object
    is never left without a positive anchor."""
    target = np.zeros((len(anchors), 5), np.float32)
    target[:, 4] = BACKGROUND
    if len(boxes) == 0:
        return target
    iou = iou_matrix(anchors, boxes)
    best = iou.argmax(1)
    best_iou = iou[np.arange(len(anchors)), best]
    best[iou.argmax(0)] = np.arange(len(boxes))
    best_iou[iou.argmax(0)] = 1.0
    target[:, :4] = encode_boxes(boxes[best], anchors)
    target[:, 4] = np.where(best_iou >= positive_iou, classes[best],
                            np.where(best_iou < negative_iou, BACKGROUND, IGNORE))
    return target


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, highest score first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i = order[0]
        keep.append(i)
        if len(order) == 1:
            break
        overlap = iou_matrix(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][overlap <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def postprocess(outputs: np.ndarray, anchors: np.ndarray, score_threshold: float = 0.05,
                iou_threshold: float = 0.5, max_detections: int = 100, pre_nms: int = 1000,
                class_agnostic_nms: bool = False) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Raw model outputs (B, N, 4 + C logits) -> per image (boxes, scores, class ids)."""
    results = []
    for out in outputs:
        probs = 1.0 / (1.0 + np.exp(-out[:, 4:]))
        classes = probs.argmax(1)
        scores = probs[np.arange(len(probs)), classes]
        idx = np.flatnonzero(scores >= score_threshold)
        idx = idx[np.argsort(-scores[idx], kind="stable")[:pre_nms]]
        boxes = decode_boxes(out[idx, :4], anchors[idx])
        scores, classes = scores[idx], classes[idx]
        # Per-class NMS in one pass: offset each class's boxes so classes never overlap.
        shift = 0.0 if class_agnostic_nms else classes[:, None] * (boxes.max(initial=0.0) + 1.0)
        keep = nms(boxes + shift, scores, iou_threshold)[:max_detections]
        results.append((boxes[keep], scores[keep], classes[keep]))
    return results
