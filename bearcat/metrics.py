"""Scores: exact match, character accuracy and character error rate (CER); how sure an
accuracy is (its Wilson interval) and whether one reader beats another on the same images
(McNemar's exact test, the paired difference's interval; bearcat/compare.py)."""
from __future__ import annotations

import math

# A metric whose name ends so is better lower (val_loss, test_cer, best_val_cer, test_ms_per_image...);
# every other one Bearcat reports (accuracies, mAP, click success) is better higher.
LOWER_IS_BETTER_ENDINGS = ("loss", "cer", "ms_per_image", "low_confidence_fraction")


def lower_is_better(metric: str) -> bool:
    return str(metric).endswith(LOWER_IS_BETTER_ENDINGS)


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% (z = 1.96) Wilson score interval of a proportion measured as successes/trials:
    where the accuracy on all such images likely lies, given this test set's size. Unlike
    p ± z·sqrt(p(1-p)/n) it stays inside [0, 1] and is not zero-wide at 0 or 1 correct."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value for two readers of the same images: the chance that a
    fair coin splits the `only_a + only_b` images they disagree on at least this unevenly.
    The images both read alike say nothing about which reader is better."""
    disagreements, fewer = only_a + only_b, min(only_a, only_b)
    if disagreements == 0:
        return 1.0
    tail = sum(math.comb(disagreements, k) for k in range(fewer + 1)) / 2 ** disagreements
    return min(1.0, 2 * tail)


def paired_difference(only_a: int, only_b: int, images: int, z: float = 1.959964) -> tuple[float, float, float]:
    """B's accuracy minus A's on the same images, with its 95% interval: (difference, low, high).
    The interval is Agresti and Min's (half an image added to each cell of the 2x2 table), which
    stays sensible when the readers rarely disagree, where the plain Wald one collapses to 0."""
    if images <= 0:
        return 0.0, -1.0, 1.0
    b, c, n = only_a + 0.5, only_b + 0.5, images + 2.0
    centre = (c - b) / n
    half = z * math.sqrt(max((b + c) - (c - b) ** 2 / n, 0.0)) / n
    return (only_b - only_a) / images, max(-1.0, centre - half), min(1.0, centre + half)


def edit_ops(truth: str, pred: str) -> tuple[int, int, int, int]:
    """Levenshtein alignment -> (matches, substitutions, deletions, insertions)."""
    n, m = len(truth), len(pred)
    # dp[i][j] = (cost, matches) for truth[:i] vs pred[:j]; ties prefer more matches.
    prev = [(j, 0, 0, 0, j) for j in range(m + 1)]  # cost, match, sub, del, ins
    for i in range(1, n + 1):
        cur = [(i, 0, 0, i, 0)]
        for j in range(1, m + 1):
            same = truth[i - 1] == pred[j - 1]
            c, mt, s, d, ins = prev[j - 1]
            best = (c + (0 if same else 1), mt + same, s + (not same), d, ins)
            c, mt, s, d, ins = prev[j]
            best = min(best, (c + 1, mt, s, d + 1, ins), key=lambda t: (t[0], -t[1]))
            c, mt, s, d, ins = cur[j - 1]
            best = min(best, (c + 1, mt, s, d, ins + 1), key=lambda t: (t[0], -t[1]))
            cur.append(best)
        prev = cur
    _, mt, s, d, ins = prev[m]
    return mt, s, d, ins


def text_metrics(truths: list[str], preds: list[str]) -> dict[str, float]:
    """accuracy: whole string right; char_accuracy: true characters read right (aligned);
    cer: (substitutions + deletions + insertions) / true characters."""
    if len(truths) != len(preds):
        raise ValueError("truths and preds differ in length")
    if not truths:
        return {"accuracy": 0.0, "char_accuracy": 0.0, "cer": 0.0}
    exact = sum(t == p for t, p in zip(truths, preds))
    total = matched = errors = 0
    for t, p in zip(truths, preds):
        mt, s, d, ins = edit_ops(t, p)
        total += len(t)
        matched += mt
        errors += s + d + ins
    total = max(total, 1)
    return {"accuracy": exact / len(truths), "char_accuracy": matched / total, "cer": errors / total}
