"""Measuring the demo model: a digit judge, the metrics, and fixed evaluation sets.

The judge is an RBF SVM trained only on the digits the generator never saw (the classifier share
of the split in `data`), on 8x8 block means of the ink, so it reads generated 64 px images the
same way it reads real ones. Tests and `benchmarks/quality.py` reuse everything here.

Images are (N, H, W) float arrays in [0, 1], ink dark (as the model draws them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from generative_service.training import data as D

EVAL_SEED_BASE = 10_000


@dataclass(frozen=True)
class EvalItem:
    """One image of an evaluation set: its prompt, the class asked for, and the seed."""

    prompt: str
    label: int
    seed: int


class Judge:
    """Digit classifier on held-out real digits: `predict` for accuracy, `features` for Fréchet distance."""

    def __init__(self, classifier, real_accuracy: float) -> None:
        self._classifier = classifier
        self.real_accuracy = real_accuracy  # on the generator's training digits, which it never saw

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class of each image."""
        return self._classifier.predict(judge_input(images))

    def features(self, images: np.ndarray) -> np.ndarray:
        """(N, 10) one-vs-rest decision values: the space Fréchet distances are measured in."""
        return self._classifier.decision_function(judge_input(images))


def judge_input(images: np.ndarray) -> np.ndarray:
    """(N, H, W) images -> (N, 64) ink block means on an 8x8 grid (H and W multiples of 8)."""
    ink = 1.0 - np.asarray(images, dtype=np.float64)
    n, h, w = ink.shape
    return ink.reshape(n, 8, h // 8, 8, w // 8).mean(axis=(2, 4)).reshape(n, 64)


def train_judge() -> Judge:
    """Fit the judge on the held-out digits (deterministic, ~1 s)."""
    from sklearn.svm import SVC

    generator_set, classifier_set = D.load_digits_split()
    classifier = SVC(C=10.0, decision_function_shape="ovr")
    classifier.fit(judge_input(classifier_set.images), classifier_set.labels)
    accuracy = float(
        (classifier.predict(judge_input(generator_set.images)) == generator_set.labels).mean()
    )
    return Judge(classifier, accuracy)


def eval_set(
    per_digit: int, *, heldout: bool = False, seed_base: int = EVAL_SEED_BASE
) -> list[EvalItem]:
    """`per_digit` images per digit, cycling through the (training or held-out) phrasings, fixed seeds."""
    items = []
    for digit in range(D.NUM_CLASSES):
        prompts = D.prompts_for(digit, heldout=heldout)
        for i in range(per_digit):
            items.append(EvalItem(prompts[i % len(prompts)], digit, seed_base + 100 * digit + i))
    return items


def accuracy(judge: Judge, images: np.ndarray, labels: list[int] | np.ndarray) -> float:
    """Share of images the judge reads as the class that was asked for."""
    return float((judge.predict(images) == np.asarray(labels)).mean())


def per_class_accuracy(
    judge: Judge, images: np.ndarray, labels: list[int] | np.ndarray
) -> dict[int, float]:
    """Prompted-class accuracy for each digit."""
    labels = np.asarray(labels)
    predicted = judge.predict(images)
    return {int(c): float((predicted[labels == c] == c).mean()) for c in np.unique(labels)}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * covmean))


def edge_f1(images: np.ndarray, control_edges: np.ndarray, *, tolerance: int = 1) -> float:
    """Mean F1 between each image's Canny edges and its control edges, within `tolerance` pixels."""
    return edge_f1_of(D.canny_edges(images), control_edges, tolerance=tolerance)


def edge_f1_of(edges: np.ndarray, control_edges: np.ndarray, *, tolerance: int = 1) -> float:
    """Mean F1 between edge maps and control edge maps, within `tolerance` pixels."""
    import cv2

    kernel: np.ndarray = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    scores = []
    for found, control in zip(edges, control_edges, strict=True):
        near_control = cv2.dilate(control.astype(np.uint8), kernel) > 0
        near_found = cv2.dilate(found.astype(np.uint8), kernel) > 0
        precision = (found.astype(bool) & near_control).sum() / max(1, found.sum())
        recall = (control.astype(bool) & near_found).sum() / max(1, control.sum())
        scores.append(
            0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
        )
    return float(np.mean(scores))


def real_digits(count_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count_per_class` held-out real digits of each class (controls, Fréchet reference)."""
    _, classifier_set = D.load_digits_split()
    picks = [
        np.flatnonzero(classifier_set.labels == c)[:count_per_class] for c in range(D.NUM_CLASSES)
    ]
    idx = np.concatenate(picks)
    return classifier_set.images[idx], classifier_set.labels[idx]


def to_gray(pil_images) -> np.ndarray:
    """PIL images -> (N, H, W) float array in [0, 1]."""
    return np.stack(
        [np.asarray(image.convert("L"), dtype=np.float32) / 255.0 for image in pil_images]
    )


def evaluate_bundle(
    drawer,
    judge: Judge,
    *,
    per_digit: int = 10,
    heldout_per_digit: int = 6,
    control_per_digit: int = 3,
    guidance: float = 5.0,
    guidances: tuple[float, ...] = (5.0, 7.5),
    steps: int = 20,
    sampler: str = "dpmpp_2m_karras",
) -> dict:
    """Every number the model card reports, drawn with `drawer` (see `training.drawing`)."""
    common = {"steps": steps, "sampler": sampler}
    report: dict = {
        "guidance": guidance,
        "seed_base": EVAL_SEED_BASE,
        "judge_real_accuracy": judge.real_accuracy,
        **common,
    }
    items = eval_set(per_digit)
    prompts, seeds, labels = (
        [i.prompt for i in items],
        [i.seed for i in items],
        [i.label for i in items],
    )
    report["accuracy_by_guidance"] = {}
    for g in sorted(set(guidances) | {guidance}):
        images = drawer.draw(prompts, seeds, guidance=g, **common)
        report["accuracy_by_guidance"][str(g)] = accuracy(judge, images, labels)
        if g == guidance:
            reference, _ = real_digits(10_000)
            report["frechet"] = frechet_distance(judge.features(images), judge.features(reference))
            report["per_class_accuracy"] = per_class_accuracy(judge, images, labels)
    report["n_train_prompts"] = len(items)
    heldout = eval_set(heldout_per_digit, heldout=True)
    images = drawer.draw(
        [i.prompt for i in heldout], [i.seed for i in heldout], guidance=guidance, **common
    )
    report["heldout_accuracy"] = accuracy(judge, images, [i.label for i in heldout])
    report["n_heldout_prompts"] = len(heldout)
    report["controlnet"] = evaluate_controlnet(
        drawer, judge, per_digit=control_per_digit, guidance=guidance, steps=steps, sampler=sampler
    )
    report["lora"] = evaluate_lora(
        drawer, judge, per_digit=control_per_digit, guidance=guidance, steps=steps, sampler=sampler
    )
    return report


def evaluate_controlnet(
    drawer,
    judge: Judge,
    *,
    per_digit: int,
    guidance: float,
    conditioning_scale: float = 0.8,
    **common,
) -> dict:
    """Edge agreement with and without the canny control, and whether a control alone picks the digit.

    Controls are held-out real digits (neither the UNet nor the ControlNet saw them).
    """
    controls, labels = real_digits(per_digit)
    edges = D.canny_edges(controls)
    seeds = [EVAL_SEED_BASE + 7 * i for i in range(len(labels))]
    prompts = [D.prompts_for(int(c))[i % len(D.TRAIN_TEMPLATES)] for i, c in enumerate(labels)]
    on = drawer.draw(
        prompts,
        seeds,
        guidance=guidance,
        controls=controls,
        conditioning_scale=conditioning_scale,
        **common,
    )
    off = drawer.draw(prompts, seeds, guidance=guidance, **common)
    generic = [D.GENERIC_PROMPTS[0]] * len(labels)
    steered = drawer.draw(
        generic,
        seeds,
        guidance=guidance,
        controls=controls,
        conditioning_scale=conditioning_scale,
        **common,
    )
    return {
        "conditioning_scale": conditioning_scale,
        "edge_f1_on": edge_f1(on, edges),
        "edge_f1_off": edge_f1(off, edges),
        "accuracy_on": accuracy(judge, on, labels),
        "steer_accuracy": accuracy(judge, steered, labels),
        "n": len(labels),
    }


def evaluate_lora(
    drawer, judge: Judge, *, per_digit: int, guidance: float, name: str = "bold", **common
) -> dict:
    """Stroke weight with the style LoRA on and off, and exact base output once it is off again."""
    items = eval_set(per_digit, seed_base=EVAL_SEED_BASE + 5000)
    prompts, seeds, labels = (
        [i.prompt for i in items],
        [i.seed for i in items],
        [i.label for i in items],
    )
    base = drawer.draw(prompts, seeds, guidance=guidance, **common)
    on = drawer.draw(prompts, seeds, guidance=guidance, loras={name: 1.0}, **common)
    off = drawer.draw(prompts, seeds, guidance=guidance, **common)
    real, _ = real_digits(10_000)
    return {
        "ink_off": float(D.ink_fraction(base).mean()),
        "ink_on": float(D.ink_fraction(on).mean()),
        "ink_real": float(D.ink_fraction(real).mean()),
        "ink_bold_real": float(D.ink_fraction(D.bold(real)).mean()),
        "accuracy_on": accuracy(judge, on, labels),
        "off_exact": bool(np.array_equal(base, off)),
        "n": len(items),
    }
