"""efficientdet: object detection for click captchas.

Classes: with `class_mode: single` the detector finds "a character" (one class) and a
`num_classes` recogniser trained on crops names it; with `per_char` every character is
its own detector class. The model is built by bearcat.detection.model (not a head on a
shared backbone), trained by bearcat.detection.train.

Decoding gives boxes on the model's input canvas; bearcat.detection.predictor maps them
back to the caller's image and runs the recogniser. Confidence of an image = the lowest
score among its kept boxes (the answer is only as sure as its least sure character).
"""
from __future__ import annotations

import numpy as np

from bearcat.data.labels import Vocabulary
from bearcat.detection.anchors import AnchorConfig, anchor_boxes, postprocess
from bearcat.modes.base import Mode

SINGLE_CLASS = "char"


class DetectionMode(Mode):
    name = "efficientdet"
    text = False

    def __init__(self, vocab: Vocabulary, max_length: int = 1, input_height: int = 128, input_width: int = 256,
                 class_mode: str = "single", min_level: int = 3, max_level: int = 5, anchor_size: float = 4.0,
                 num_scales: int = 3, ratios=(1.0,), score_threshold: float = 0.3, iou_threshold: float = 0.5,
                 max_detections: int = 20, **options):
        if class_mode not in ("single", "per_char"):
            raise ValueError(f"mode.class_mode={class_mode}: choose single or per_char")
        super().__init__(vocab, 1, **options)
        self.input_height, self.input_width = int(input_height), int(input_width)
        self.class_mode = class_mode
        self.anchor_config = AnchorConfig(int(min_level), int(max_level), float(anchor_size),
                                          tuple(2 ** (k / num_scales) for k in range(int(num_scales))),
                                          tuple(float(r) for r in ratios))
        self.anchors = anchor_boxes(self.input_height, self.input_width, self.anchor_config)
        self.score_threshold, self.iou_threshold = float(score_threshold), float(iou_threshold)
        self.max_detections = int(max_detections)
        self.settings = dict(input_height=self.input_height, input_width=self.input_width, class_mode=class_mode,
                             min_level=int(min_level), max_level=int(max_level), anchor_size=float(anchor_size),
                             num_scales=int(num_scales), ratios=[float(r) for r in ratios],
                             score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
                             max_detections=self.max_detections)

    @classmethod
    def detector_classes(cls, categories: list[str], class_mode: str) -> Vocabulary:
        return Vocabulary([SINGLE_CLASS] if class_mode == "single" else list(categories))

    def class_id(self, name: str) -> int:
        """Detector class of an object named `name` (0-based; the Vocabulary's reserved id 0
        is not used by the detector)."""
        return 0 if self.class_mode == "single" else self.vocab.encode([name])[0] - 1

    def check_label(self, label):  # detection labels are boxes, checked when read (voc.read_voc)
        return None

    def decode(self, outputs: np.ndarray, score_threshold: float | None = None) -> list[dict]:
        """Raw outputs -> [{"result", "confidence", "boxes": [{label, score, x1, y1, x2, y2}]}]
        with boxes on the input canvas, left to right."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        results = []
        for boxes, scores, classes in postprocess(np.asarray(outputs, np.float32), self.anchors, threshold,
                                                  self.iou_threshold, self.max_detections):
            order = np.argsort(boxes[:, 0], kind="stable") if len(boxes) else []
            found = [{"label": self.vocab.chars[int(classes[i])], "score": float(scores[i]),
                      **dict(zip(("x1", "y1", "x2", "y2"), (float(v) for v in boxes[i])))} for i in order]
            results.append({"result": "".join(b["label"] for b in found) if self.class_mode == "per_char" else "",
                            "confidence": min((b["score"] for b in found), default=0.0), "boxes": found})
        return results

    def config(self) -> dict:
        return {"name": self.name, "max_length": 1, **self.settings, **self.options}
