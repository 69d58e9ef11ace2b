"""Training data of the demo model: scikit-learn's digits rendered at 64 px, prompts, edges, styles.

Everything here is deterministic: the same call gives the same arrays on every machine, which is
what makes retraining reproduce the committed model.

Images are float32 arrays in [0, 1] with dark ink on white paper (what a user expects a
"handwritten seven" to look like); `ink` arrays are the opposite (1 = ink), which is what the
classifier and the metrics work on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 64
NUM_CLASSES = 10
CLASSIFIER_SHARE = 0.33  # held out from the generator; the judge is trained on these only
SPLIT_SEED = 0
CANNY_LOW = 100  # the request defaults (schemas.ControlSpec), so training matches serving
CANNY_HIGH = 200

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Phrasings the model is trained on. `{n}` is the numeral, `{w}` the word, `{a}` "a"/"an".
TRAIN_TEMPLATES = (
    "{n}",
    "{w}",
    "the digit {w}",
    "the digit {n}",
    "digit {n}",
    "a handwritten {w}",
    "a handwritten {n}",
    "handwritten digit {n}",
    "number {n}",
    "number {w}",
    "the number {w}",
    "the number {n}",
    "{a} {w}",
    "a drawing of the digit {w}",
    "an image of the number {n}",
    "a picture of {a} {w}",
    "the numeral {n}",
    "{n}, handwritten",
    "{w}, written by hand",
    "a sketch of the number {w}",
)
# Phrasings never seen in training: measured to report how far the frozen text encoders generalise.
HELDOUT_TEMPLATES = (
    "a photo of the number {w}",
    "draw the digit {n}",
    "show me {a} {w}",
    "the handwritten number {w}",
    "digit: {n}",
    "please write the numeral {w}",
)
# Prompts without a class: trained on random digits, so they give "any digit" (useful with ControlNet).
GENERIC_PROMPTS = ("a handwritten digit", "a digit", "handwritten number")


@dataclass(frozen=True)
class DigitData:
    """Digits at IMAGE_SIZE px: `images` (N, 64, 64) float32 in [0, 1] (ink dark) and `labels` (N,)."""

    images: np.ndarray
    labels: np.ndarray


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def phrase(template: str, digit: int) -> str:
    """One prompt: `template` filled in for `digit`."""
    word = WORDS[digit]
    return template.format(n=digit, w=word, a=_article(word))


def prompts_for(digit: int, *, heldout: bool = False) -> list[str]:
    """Every training (or held-out) phrasing of `digit`."""
    templates = HELDOUT_TEMPLATES if heldout else TRAIN_TEMPLATES
    return [phrase(template, digit) for template in templates]


def training_corpus() -> list[str]:
    """All training prompts (the tokenizers learn their merges from exactly these)."""
    corpus = [p for digit in range(NUM_CLASSES) for p in prompts_for(digit)]
    return corpus + list(GENERIC_PROMPTS)


def render(small: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """8x8 scikit-learn digits (0..16, ink high) -> (N, size, size) paper-white images in [0, 1].

    Bicubic upsampling makes soft blobs; a contrast curve turns them into crisp strokes, which
    look like handwriting and give Canny real edges to find.
    """
    import torch
    import torch.nn.functional as F

    ink = torch.from_numpy(np.asarray(small, dtype=np.float32) / 16.0)[:, None]
    ink = F.interpolate(ink, size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    ink = ((ink - 0.25) / 0.45).clamp(0.0, 1.0)
    ink = ink * ink * (3 - 2 * ink)  # smoothstep keeps the stroke edges anti-aliased
    return (1.0 - ink).numpy().astype(np.float32)


def load_digits_split() -> tuple[DigitData, DigitData]:
    """(generator_set, classifier_set): a fixed stratified split of scikit-learn's 1797 digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx = np.arange(len(digits.target))
    gen_idx, cls_idx = train_test_split(
        idx, test_size=CLASSIFIER_SHARE, random_state=SPLIT_SEED, stratify=digits.target
    )
    images = render(digits.images)
    labels = digits.target.astype(np.int64)
    return (
        DigitData(images[np.sort(gen_idx)], labels[np.sort(gen_idx)]),
        DigitData(images[np.sort(cls_idx)], labels[np.sort(cls_idx)]),
    )


def canny_edges(images: np.ndarray, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> np.ndarray:
    """(N, H, W) images in [0, 1] -> (N, H, W) float32 edge maps in {0, 1} (OpenCV Canny)."""
    import cv2

    out = np.empty_like(images, dtype=np.float32)
    for i, image in enumerate(images):
        gray = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
        out[i] = cv2.Canny(gray, low, high) > 0
    return out


def bold(images: np.ndarray, radius: int = 2) -> np.ndarray:
    """The LoRA's style: strokes thickened by a grey dilation of the ink (radius in pixels)."""
    import torch
    import torch.nn.functional as F

    ink = 1.0 - torch.from_numpy(images)[:, None]
    ink = F.max_pool2d(ink, kernel_size=2 * radius + 1, stride=1, padding=radius)
    return (1.0 - ink[:, 0]).numpy().astype(np.float32)


def ink_fraction(images: np.ndarray) -> np.ndarray:
    """Per image, the share of pixels that are ink (darker than mid-grey): the stroke-weight metric."""
    return (np.asarray(images) < 0.5).reshape(len(images), -1).mean(axis=1)


def to_pixels(images: np.ndarray) -> np.ndarray:
    """(N, H, W) [0, 1] grey -> (N, 3, H, W) float32 in [-1, 1] (the VAE's input)."""
    x = np.asarray(images, dtype=np.float32) * 2.0 - 1.0
    return np.repeat(x[:, None], 3, axis=1)
