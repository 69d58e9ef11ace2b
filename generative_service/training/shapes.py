"""A procedural world of flat shapes on a light background, its prompts, and an exact judge.

A scene holds one or two shapes from {circle, square, triangle} in {red, green, blue, yellow},
14-26 px across, on a 64x64 near-white background. Everything is deterministic: a scene comes
from a seed, so the training set, the evaluation prompts and the "real" reference renders are the
same on every machine.

The judge reads an image back into objects without any learning: HSV colour segmentation,
connected components, a contour shape feature (area over bounding-box area: 1 for a square,
pi/4 for a circle, 1/2 for a triangle) and centroids. `score` checks a prompt's `Spec` against
what the judge found, GenEval style.

Images are uint8 arrays (N, 64, 64, 3) RGB unless said otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

IMAGE_SIZE = 64
COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
BACKGROUND = (245, 245, 240)
PASTEL_MIX = 0.5  # the LoRA's style: every colour halfway to white
MIN_SIZE, MAX_SIZE = 14, 26
SUPERSAMPLE = 4
CATEGORIES = ("single", "two_objects", "counting", "colour_attribution", "position")

# Relation phrasings: (words, axis, sign). `a A {words} a B` holds when sign * (B - A) > 0 on axis
# (x grows to the right, y downwards).
RELATIONS = {
    "to the left of": ("x", 1),
    "left of": ("x", 1),
    "to the right of": ("x", -1),
    "right of": ("x", -1),
    "above": ("y", 1),
    "on top of": ("y", 1),
    "below": ("y", -1),
    "under": ("y", -1),
}
# Where a single shape sits: (phrase, axis, sign of its offset from the centre).
REGIONS = {
    "on the left": ("x", -1),
    "on the right": ("x", 1),
    "at the top": ("y", -1),
    "at the bottom": ("y", 1),
}
GENERIC_PROMPTS = ("a shape", "shapes", "a flat shape on a white background")


@dataclass(frozen=True)
class Obj:
    """One drawn shape: colour, shape, centre (px) and size (bounding-box side, px)."""

    colour: str
    shape: str
    cx: float
    cy: float
    size: float


@dataclass(frozen=True)
class Want:
    """What a prompt asks of one object (None: any)."""

    colour: str | None
    shape: str | None

    def matches(self, obj: Obj | Found) -> bool:
        return (self.colour is None or obj.colour == self.colour) and (
            self.shape is None or obj.shape == self.shape
        )


@dataclass(frozen=True)
class Spec:
    """A prompt and what it asks for: the objects, and optionally a relation or a region.

    `relation` = (axis, sign): object 0 is before object 1 on `axis` when sign is 1.
    `region` = (axis, sign): the single object's offset from the centre has that sign.
    """

    prompt: str
    category: str
    wants: tuple[Want, ...]
    relation: tuple[str, int] | None = None
    region: tuple[str, int] | None = None
    seed: int = 0
    negative: str | None = None
    extra: dict = field(default_factory=dict, compare=False)


# --- rendering ---------------------------------------------------------------------------------


def _polygon(obj: Obj, scale: int) -> list[tuple[float, float]] | None:
    h = obj.size * scale / 2
    cx, cy = obj.cx * scale, obj.cy * scale
    if obj.shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if obj.shape == "triangle":  # pointing up, base and height = size
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    return None


def colour_of(name: str, *, pastel: bool = False) -> tuple[int, int, int]:
    rgb = np.array(PALETTE[name], dtype=np.float64)
    if pastel:
        rgb = rgb + (255.0 - rgb) * PASTEL_MIX
    red, green, blue = (int(round(v)) for v in rgb)
    return red, green, blue


def render(objects: list[Obj] | tuple[Obj, ...], *, pastel: bool = False) -> np.ndarray:
    """One scene -> (64, 64, 3) uint8, anti-aliased (drawn at 4x and downsampled)."""
    from PIL import Image, ImageDraw

    s = SUPERSAMPLE
    canvas = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        fill = colour_of(obj.colour, pastel=pastel)
        polygon = _polygon(obj, s)
        if polygon is None:
            h = obj.size * s / 2
            box = (obj.cx * s - h, obj.cy * s - h, obj.cx * s + h, obj.cy * s + h)
            draw.ellipse(box, fill=fill)
        else:
            draw.polygon(polygon, fill=fill)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def render_many(scenes, *, pastel: bool = False) -> np.ndarray:
    """(N, 64, 64, 3) uint8 for a list of scenes."""
    return np.stack([render(scene, pastel=pastel) for scene in scenes])


# --- placing shapes ----------------------------------------------------------------------------

_MARGIN = 2  # px between a shape and the border
_GAP = 4  # px between two shapes' bounding boxes


def _size(rng: np.random.Generator) -> float:
    return float(rng.integers(MIN_SIZE, MAX_SIZE + 1))


def _free_range(size: float) -> tuple[float, float]:
    return size / 2 + _MARGIN, IMAGE_SIZE - size / 2 - _MARGIN


def _place_single(rng, colour, shape, region) -> Obj:
    size = _size(rng)
    lo, hi = _free_range(size)
    if region is None:
        return Obj(colour, shape, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), size)
    axis, sign = region
    c = IMAGE_SIZE / 2
    along = rng.uniform(lo, c - 10) if sign < 0 else rng.uniform(c + 10, hi)
    across = rng.uniform(c - 6, c + 6)
    x, y = (along, across) if axis == "x" else (across, along)
    return Obj(colour, shape, float(x), float(y), size)


def _place_pair(rng, first: tuple[str, str], second: tuple[str, str], relation) -> list[Obj]:
    """Two non-touching shapes; with `relation` (axis, sign), object 0 clearly before object 1.

    Without a relation the pair is still placed along a random axis (so scenes look alike).
    """
    if relation is None:
        relation = (("x", "y")[rng.integers(2)], 1 if rng.random() < 0.5 else -1)
    axis, sign = relation
    for _ in range(100):
        a, b = _size(rng), _size(rng)
        lo_a, hi_a = _free_range(a)
        lo_b, hi_b = _free_range(b)
        gap = (a + b) / 2 + _GAP
        # On the relation's axis: the earlier shape first, the later one at least `gap` further.
        (lo_1, _), (_, hi_2) = (lo_a, hi_a), (lo_b, hi_b)
        if sign < 0:
            (lo_1, _), (_, hi_2) = (lo_b, hi_b), (lo_a, hi_a)
        if hi_2 - lo_1 < gap:
            continue
        p1 = rng.uniform(lo_1, hi_2 - gap)
        p2 = rng.uniform(p1 + gap, hi_2)
        pa, pb = (p1, p2) if sign > 0 else (p2, p1)
        # The other coordinate: close enough that the relation's axis clearly dominates.
        qa = rng.uniform(max(lo_a, 14), min(hi_a, 50))
        qb = float(np.clip(qa + rng.uniform(-6, 6), lo_b, hi_b))
        if abs(qb - qa) * 1.5 > abs(pb - pa):
            continue
        pa, pb = float(pa), float(pb)
        if axis == "x":
            return [Obj(*first, pa, qa, a), Obj(*second, pb, qb, b)]
        return [Obj(*first, qa, pa, a), Obj(*second, qb, pb, b)]
    raise RuntimeError("could not place two shapes")  # pragma: no cover - sizes always fit


def scene_for(spec: Spec, rng: np.random.Generator | None = None) -> list[Obj]:
    """A real scene that satisfies `spec` (attributes left open are drawn at random)."""
    rng = rng if rng is not None else np.random.default_rng(spec.seed)
    filled = [
        (w.colour or COLOURS[rng.integers(4)], w.shape or SHAPES[rng.integers(3)])
        for w in spec.wants
    ]
    if spec.category == "counting" and len(set(filled)) > 1:
        filled = [filled[0], filled[0]]
    if len(filled) == 1:
        return [_place_single(rng, *filled[0], spec.region)]
    return _place_pair(rng, filled[0], filled[1], spec.relation)


# --- prompts -----------------------------------------------------------------------------------


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


SINGLE_FORMS = (
    "a {c} {s}",
    "{c} {s}",
    "one {c} {s}",
    "a {c} {s} on a white background",
    "a {s}",
)
COUNT_FORMS = ("two {c} {p}", "2 {c} {p}", "a pair of {c} {p}", "two {p}")


def single_spec(form: str, colour: str, shape: str, *, seed: int = 0) -> Spec:
    prompt = form.format(c=colour, s=shape)
    want = Want(colour if "{c}" in form else None, shape)
    return Spec(prompt, "single", (want,), seed=seed)


def count_spec(form: str, colour: str, shape: str, *, seed: int = 0) -> Spec:
    prompt = form.format(c=colour, p=PLURALS[shape])
    want = Want(colour if "{c}" in form else None, shape)
    return Spec(prompt, "counting", (want, want), seed=seed)


def pair_spec(c1, s1, c2, s2, *, seed: int = 0) -> Spec:
    """`a {c1} {s1} and a {c2} {s2}` (colour attribution) or, with no colours, two objects."""
    if c1 is None:
        prompt, category = f"a {s1} and a {s2}", "two_objects"
    else:
        prompt, category = f"a {c1} {s1} and a {c2} {s2}", "colour_attribution"
    return Spec(prompt, category, (Want(c1, s1), Want(c2, s2)), seed=seed)


def relation_spec(c1, s1, words: str, c2, s2, *, seed: int = 0) -> Spec:
    prompt = f"a {c1} {s1} {words} a {c2} {s2}"
    return Spec(
        prompt, "position", (Want(c1, s1), Want(c2, s2)), relation=RELATIONS[words], seed=seed
    )


def region_spec(colour: str, shape: str, words: str, *, seed: int = 0) -> Spec:
    prompt = f"a {colour} {shape} {words}"
    return Spec(prompt, "position", (Want(colour, shape),), region=REGIONS[words], seed=seed)


def every_phrasing() -> list[str]:
    """Every prompt of every trained form (the tokenizers learn their merges from these)."""
    out = list(GENERIC_PROMPTS) + list(COLOURS) + list(SHAPES)
    out += [f"a {c} shape" for c in COLOURS]
    for c in COLOURS:
        for s in SHAPES:
            out += [single_spec(f, c, s).prompt for f in SINGLE_FORMS]
            out += [count_spec(f, c, s).prompt for f in COUNT_FORMS]
            out += [region_spec(c, s, w).prompt for w in REGIONS]
            for c2 in COLOURS:
                for s2 in SHAPES:
                    out.append(pair_spec(c, s, c2, s2).prompt)
                    out += [relation_spec(c, s, w, c2, s2).prompt for w in RELATIONS]
    for s in SHAPES:
        for s2 in SHAPES:
            out.append(pair_spec(None, s, None, s2).prompt)
    return sorted(set(out))


def random_spec(category: str, rng: np.random.Generator, *, seed: int = 0) -> Spec:
    """A random prompt of `category` (the evaluation sets and the training scenes use this)."""
    c1, c2 = (COLOURS[i] for i in rng.choice(4, size=2, replace=False))
    s1, s2 = (SHAPES[i] for i in rng.choice(3, size=2, replace=False))
    if category == "single":
        return single_spec(SINGLE_FORMS[rng.integers(len(SINGLE_FORMS))], c1, s1, seed=seed)
    if category == "counting":
        return count_spec(COUNT_FORMS[rng.integers(len(COUNT_FORMS))], c1, s1, seed=seed)
    if category == "two_objects":
        return pair_spec(None, s1, None, s2, seed=seed)
    if category == "colour_attribution":
        return pair_spec(c1, s1, c2, s2, seed=seed)
    if category == "position":
        if rng.random() < 0.25:
            words = list(REGIONS)[rng.integers(len(REGIONS))]
            return region_spec(c1, s1, words, seed=seed)
        words = list(RELATIONS)[rng.integers(len(RELATIONS))]
        if rng.random() < 0.3:  # same shape, told apart by colour
            s2 = s1
        return relation_spec(c1, s1, words, c2, s2, seed=seed)
    raise ValueError(f"unknown category {category!r}")


def eval_specs(per_category: int, *, seed_base: int = 10_000) -> list[Spec]:
    """`per_category` fixed prompts (and seeds) for each category."""
    specs = []
    for k, category in enumerate(CATEGORIES):
        rng = np.random.default_rng(seed_base + k)
        specs += [
            random_spec(category, rng, seed=seed_base + 1000 * k + i) for i in range(per_category)
        ]
    return specs


def prompts_for_scene(objects: list[Obj]) -> list[str]:
    """Every trained prompt that is true of a scene (the training pairs are drawn from these)."""
    if len(objects) == 1:
        o = objects[0]
        out = [single_spec(f, o.colour, o.shape).prompt for f in SINGLE_FORMS]
        out += [o.colour, o.shape, f"a {o.colour} shape"]
        for words, region in REGIONS.items():
            if _in_region(o, region, strict=True):
                out += [region_spec(o.colour, o.shape, words).prompt] * 2
        return out
    a, b = objects
    if (a.colour, a.shape) == (b.colour, b.shape):
        return [count_spec(f, a.colour, a.shape).prompt for f in COUNT_FORMS]
    out = [pair_spec(a.colour, a.shape, b.colour, b.shape).prompt]
    out.append(pair_spec(b.colour, b.shape, a.colour, a.shape).prompt)
    if a.shape != b.shape:
        # Twice each: with no colour to hold on to, the model drew two of one shape (or three
        # shapes) for `a circle and a square` more often than not when these weighed as one each.
        out += [pair_spec(None, a.shape, None, b.shape).prompt] * 2
        out += [pair_spec(None, b.shape, None, a.shape).prompt] * 2
    for words, relation in RELATIONS.items():
        for first, second in ((a, b), (b, a)):
            if _related(first, second, relation):
                out.append(relation_spec(first.colour, first.shape, words, second.colour, second.shape).prompt)  # fmt: skip
    return out


# --- what a prompt means (the text encoders' pretraining targets) ------------------------------

# Per object slot: colour (0 any, then COLOURS), shape (0 any, then SHAPES), x and y
# (0 not said, 1 left / top, 2 right / bottom). Plus the object count: 0 not said, 1, 2.
MEANING_CLASSES = (3,) + (len(COLOURS) + 1, len(SHAPES) + 1, 3, 3) * 2
_SINGULAR = {plural: shape for shape, plural in PLURALS.items()}


def prompt_meaning(prompt: str) -> tuple[int, ...]:
    """The layout a trained phrasing asks for, as class indices of `MEANING_CLASSES`.

    Objects in the order the prompt names them; a relation gives object 0 and 1 opposite sides
    on its axis, a region gives the single object its side; counting names the same object twice.
    """
    objects: list[list] = []  # [colour, shape, x, y]
    colour = None
    for word in prompt.split():
        if word in COLOURS:
            colour = word
        shape = _SINGULAR.get(word, word)
        if shape in SHAPES:
            objects.append([colour, shape, 0, 0])
            colour = None
    if colour is not None:  # "red", "a red shape"
        objects.append([colour, None, 0, 0])
    padded = f" {prompt} "
    plural = any(f" {p} " in padded for p in _SINGULAR)
    count = 0 if not objects else 2 if plural or len(objects) == 2 else 1
    if plural and len(objects) == 1:
        objects.append(list(objects[0]))
    index = {"x": 2, "y": 3}
    for words in sorted(RELATIONS, key=len, reverse=True):
        if f" {words} " in padded and len(objects) == 2:
            axis, sign = RELATIONS[words]
            objects[0][index[axis]], objects[1][index[axis]] = (1, 2) if sign > 0 else (2, 1)
            break
    else:
        for words, (axis, sign) in REGIONS.items():
            if padded.endswith(f" {words} ") and len(objects) == 1:
                objects[0][index[axis]] = 1 if sign < 0 else 2
    out = [count]
    for k in range(2):
        c, s, x, y = objects[k] if k < len(objects) else (None, None, 0, 0)
        out += [
            0 if c is None else 1 + COLOURS.index(c),
            0 if s is None else 1 + SHAPES.index(s),
            x,
            y,
        ]
    return tuple(out)


# --- the judge ---------------------------------------------------------------------------------

HUES = {"red": 0.0, "yellow": 50.0, "green": 128.0, "blue": 225.0}  # degrees
MIN_SATURATION = 0.2
MIN_AREA = 40  # px; the smallest shape (a 14 px triangle) covers ~95


@dataclass(frozen=True)
class Found:
    """An object the judge found."""

    colour: str
    shape: str
    cx: float
    cy: float
    area: int
    fill: float  # area / bounding-box area


def colour_masks(image: np.ndarray) -> dict[str, np.ndarray]:
    """Per palette colour, the pixels whose hue is nearest to it (saturated pixels only)."""
    rgb = image.astype(np.float64) / 255.0
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hue = np.degrees(np.arctan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360
    names = list(HUES)
    centres = np.array([HUES[n] for n in names])
    diff = np.abs(hue[..., None] - centres)
    diff = np.minimum(diff, 360 - diff)
    nearest = diff.argmin(axis=-1)
    coloured = (sat >= MIN_SATURATION) & (mx >= 0.25)
    return {name: coloured & (nearest == i) for i, name in enumerate(names)}


def classify_fill(fill: float) -> str:
    """Shape from area / bounding-box area (square 1, circle 0.785, triangle 0.5)."""
    if fill >= 0.89:
        return "square"
    if fill >= 0.64:
        return "circle"
    return "triangle"


def detect(image: np.ndarray) -> list[Found]:
    """The objects in one (64, 64, 3) uint8 image."""
    import cv2

    found = []
    for colour, mask in colour_masks(image).items():
        count, labels, stats, centroids = cv2.connectedComponentsWithStats(
            mask.astype(np.uint8), connectivity=8
        )
        for k in range(1, count):
            area = int(stats[k, cv2.CC_STAT_AREA])
            if area < MIN_AREA:
                continue
            component = (labels == k).astype(np.uint8)
            contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            contour = max(contours, key=cv2.contourArea)
            x, y, w, h = cv2.boundingRect(contour)
            # Area of the filled outline over its box (holes and stray pixels do not count).
            filled = np.zeros_like(component)
            cv2.drawContours(filled, [contour], -1, 1, thickness=-1)
            fill = float(filled.sum()) / float(w * h)
            cx, cy = centroids[k]
            found.append(Found(colour, classify_fill(fill), float(cx), float(cy), area, fill))
    return found


def _offset(obj, axis: str) -> float:
    return (obj.cx if axis == "x" else obj.cy) - IMAGE_SIZE / 2


def _coord(obj, axis: str) -> float:
    return obj.cx if axis == "x" else obj.cy


def _other(axis: str) -> str:
    return "y" if axis == "x" else "x"


def _in_region(obj, region: tuple[str, int], *, strict: bool = False) -> bool:
    """The shape's offset from the centre points the region's way and dominates the other axis."""
    axis, sign = region
    along, across = _offset(obj, axis) * sign, abs(_offset(obj, _other(axis)))
    if strict:  # what training calls "on the left": well off-centre
        return along >= 10 and along > 1.5 * across
    return along > 4 and along > across


def _related(first, second, relation: tuple[str, int]) -> bool:
    """`first` is before `second` on the relation's axis, and that axis dominates (GenEval style)."""
    axis, sign = relation
    along = (_coord(second, axis) - _coord(first, axis)) * sign
    across = abs(_coord(second, _other(axis)) - _coord(first, _other(axis)))
    return along > 0 and along > across


def score(spec: Spec, found: list[Found]) -> bool:
    """Does the image (as the judge found it) satisfy the prompt?

    Exactly the objects asked for, no others; counting: exactly two matching objects;
    relations and regions on the centroids.
    """
    if len(found) != len(spec.wants):
        return False
    if len(spec.wants) == 1:
        obj = found[0]
        if not spec.wants[0].matches(obj):
            return False
        return spec.region is None or _in_region(obj, spec.region)
    a, b = found
    for first, second in ((a, b), (b, a)):
        if spec.wants[0].matches(first) and spec.wants[1].matches(second):
            if spec.relation is None or _related(first, second, spec.relation):
                return True
    return False


def judge(specs: list[Spec], images: np.ndarray) -> np.ndarray:
    """(N,) bool: which images satisfy their prompts."""
    return np.array([score(s, detect(im)) for s, im in zip(specs, images, strict=True)])


def accuracy_by_category(specs: list[Spec], images: np.ndarray) -> dict[str, float]:
    """Share of correct images per category (and `overall`)."""
    ok = judge(specs, images)
    out = {}
    for category in CATEGORIES:
        picks = [i for i, s in enumerate(specs) if s.category == category]
        if picks:
            out[category] = float(ok[picks].mean())
    out["overall"] = float(ok.mean())
    return out


def features(images: np.ndarray) -> np.ndarray:
    """(N, 16) judge features for Fréchet distances: per colour, object count, total area,
    mean fill and mean centroid (x, y) -- what the judge sees of a scene."""
    rows = []
    for image in images:
        found = detect(image)
        row = []
        for colour in COLOURS:
            mine = [f for f in found if f.colour == colour]
            if mine:
                row += [
                    len(mine),
                    sum(f.area for f in mine) / 100.0,
                    float(np.mean([f.fill for f in mine])),
                    float(np.mean([f.cx for f in mine])) / IMAGE_SIZE,
                ]
            else:
                row += [0.0, 0.0, 0.0, 0.5]
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


def saturation(images: np.ndarray) -> float:
    """Mean HSV saturation of the coloured (non-background) pixels: the pastel LoRA's measure."""
    rgb = np.asarray(images, dtype=np.float64) / 255.0
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)
    fg = sat >= 0.12
    return float(sat[fg].mean()) if fg.any() else 0.0


def canny_edges(images: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """(N, 64, 64, 3) uint8 -> (N, 64, 64) float32 edges in {0, 1} (OpenCV Canny on grey, the
    API's default thresholds)."""
    import cv2

    out = np.empty(images.shape[:3], dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), low, high) > 0
    return out


# --- the training set ---------------------------------------------------------------------------


def training_scenes(count: int, *, seed: int = 0) -> list[list[Obj]]:
    """`count` random scenes: 24 % one shape (half in a region), 22 % two alike, 54 % two that differ.

    (Was 30 / 20 / 50: two objects and counting were the categories below target, single and
    position well above it.)
    """
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(count):
        u = rng.random()
        colour = COLOURS[rng.integers(4)]
        shape = SHAPES[rng.integers(3)]
        if u < 0.24:
            region = None
            if rng.random() < 0.5:
                region = list(REGIONS.values())[rng.integers(4)]
            scenes.append([_place_single(rng, colour, shape, region)])
        elif u < 0.46:
            scenes.append(_place_pair(rng, (colour, shape), (colour, shape), None))
        else:
            while True:
                other = (COLOURS[rng.integers(4)], SHAPES[rng.integers(3)])
                if other != (colour, shape):
                    break
            scenes.append(_place_pair(rng, (colour, shape), other, None))
    return scenes


# --- reference renders and distances (what a model's images are compared with) -------------------

REAL_SEED_OFFSET = 500_000  # real renders use other placements than the seeds a model draws with


def real_images(specs: list[Spec], *, seed_offset: int = REAL_SEED_OFFSET, pastel: bool = False):
    """A real render satisfying each spec (placement from the spec's seed + offset)."""
    return np.stack(
        [
            render(scene_for(s, np.random.default_rng(s.seed + seed_offset)), pastel=pastel)
            for s in specs
        ]
    )


def judge_real_accuracy(specs: list[Spec]) -> dict[str, float]:
    """The judge on real renders of the prompts: it must be right before it judges a model."""
    return accuracy_by_category(specs, real_images(specs))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula)."""
    from scipy import linalg

    eps = 1e-6 * np.eye(a.shape[1])  # NOTE: constant features (a colour never drawn) are singular
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False) + eps, np.cov(b, rowvar=False) + eps
    covmean = np.real(linalg.sqrtm(cov_a @ cov_b, disp=False)[0])
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * covmean))


def frechet_to_real(specs: list[Spec], images: np.ndarray) -> dict[str, float]:
    """Fréchet distance (judge features) of `images` to real renders of the same prompts, and the
    floor: two independent real render sets of those prompts."""
    real_a = features(real_images(specs))
    real_b = features(real_images(specs, seed_offset=2 * REAL_SEED_OFFSET))
    return {
        "frechet": frechet_distance(features(images), real_a),
        "frechet_real_floor": frechet_distance(real_b, real_a),
    }
