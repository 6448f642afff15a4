"""Natural-language captions and zero-shot prompt templates for the scene world.

Captions are lowercase, have no trailing period, and name every mentioned object by colour and shape,
optionally with a size word ("small"/"large") and a texture word ("solid", "striped", "dotted",
"checkered") placed as ``[size] colour [texture] shape``. Scenes with more than three objects may be
summarised ("a red star, a blue ring and two other shapes"). Every named (colour, shape) pair exists
in the scene, and the phrasing is drawn from the generator passed in, so it is deterministic per seed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np

NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
)  # fmt: skip

BACKGROUND_WORDS: dict[str, str] = {
    "plain": "plain",
    "gradient": "gradient",
    "noisy": "noisy",
    "cluttered": "cluttered",
}
"""Background kind -> adjective used in captions ("... on a cluttered background")."""

TEXTURE_WORDS: dict[str, str] = {
    "solid": "solid",
    "striped": "striped",
    "dotted": "dotted",
    "checkered": "checkered",
}

_CLASS_TEMPLATES: tuple[str, ...] = (
    "a {}",
    "a picture of a {}",
    "a photo of a {}",
    "an image of a {}",
    "a drawing of a {}",
    "a {} shape",
    "there is a {} in the picture",
    "a single {}",
)


class CaptionObject(Protocol):
    """What a caption needs to know about one object (``SceneObject`` satisfies this)."""

    @property
    def category(self) -> str: ...

    @property
    def colour(self) -> str: ...

    @property
    def texture(self) -> str: ...

    @property
    def size_word(self) -> str: ...

    @property
    def center_norm(self) -> tuple[float, float]: ...


def plural(noun: str) -> str:
    """English plural of a shape noun ("cross" -> "crosses", "star" -> "stars")."""
    return noun + "es" if noun.endswith(("s", "x", "sh", "ch")) else noun + "s"


def with_article(phrase: str) -> str:
    """Prefix ``phrase`` with "a" or "an" according to its first letter."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def fix_articles(text: str) -> str:
    """Turn "a" before a vowel-initial word into "an" ("a photo of a ellipse" -> "... of an ellipse")."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", lambda m: m.group(1) + "n ", text)


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def class_prompt_templates() -> list[str]:
    """Prompt templates for zero-shot classification ensembles; ``{}`` takes the bare shape name.

    They mirror the caption phrasing. ``template.format(name)`` may produce "a ellipse"; use
    :func:`class_prompts` (or :func:`fix_articles`) for grammatical prompts.
    """
    return list(_CLASS_TEMPLATES)


def class_prompts(category: str) -> list[str]:
    """All templates filled with ``category`` and articles fixed, e.g. "a photo of an arrow"."""
    return [fix_articles(t.format(category)) for t in _CLASS_TEMPLATES]


def describe(obj: CaptionObject, rng: np.random.Generator) -> str:
    """Noun phrase without article: ``[size] colour [texture] shape`` (optional words drawn from ``rng``)."""
    words = []
    if obj.size_word in ("small", "large") and rng.random() < 0.4:
        words.append(obj.size_word)
    words.append(obj.colour)
    p_texture = 0.2 if obj.texture == "solid" else 0.6
    if rng.random() < p_texture:
        words.append(TEXTURE_WORDS[obj.texture])
    words.append(obj.category)
    return " ".join(words)


def _relation(a: CaptionObject, b: CaptionObject) -> str:
    """Spatial relation of ``a`` with respect to ``b`` from their normalised centres."""
    dx = a.center_norm[0] - b.center_norm[0]
    dy = a.center_norm[1] - b.center_norm[1]
    if max(abs(dx), abs(dy)) < 0.15:
        return "next to"
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def make_caption(
    objects: Sequence[CaptionObject], rng: np.random.Generator, *, background: str | None = None
) -> str:
    """Caption for a scene whose objects are given in *priority order* (when the caption summarises,
    the first objects are the ones named). ``background`` is a key of :data:`BACKGROUND_WORDS`."""
    n = len(objects)
    if n == 0:
        return rng.choice(["an empty background", "a picture with no shapes"])
    named = list(objects)
    if n > 3 and rng.random() < 0.5:
        named = named[: int(rng.integers(1, 4))]
    rest = n - len(named)
    named = [named[i] for i in rng.permutation(len(named))]

    # group identical (colour, shape) pairs into plurals ("two red circles")
    groups: dict[tuple[str, str], list[CaptionObject]] = {}
    for obj in named:
        groups.setdefault((obj.colour, obj.category), []).append(obj)
    phrases = []
    for (colour, shape), members in groups.items():
        if len(members) == 1:
            phrases.append(with_article(describe(members[0], rng)))
        else:
            phrases.append(f"{number_word(len(members))} {colour} {plural(shape)}")
    if rest:
        phrases.append(f"{number_word(rest)} other shape{'s' if rest > 1 else ''}")
    listing = _join(phrases)

    if n == 1:
        x = phrases[0]
        templates = [
            x,
            f"a picture of {x}",
            f"a photo of {x}",
            f"an image of {x}",
            f"a drawing of {x}",
            f"there is {x} in the picture",
            f"a single {x.split(' ', 1)[1]}",
        ]
    elif len(named) == 2 and len(groups) == 2 and not rest:
        a, b = phrases
        rel = _relation(named[0], named[1])
        templates = [
            listing,
            f"{a} {rel} {b}",
            f"{a} {rel} {b}",
            f"two shapes: {listing}",
            f"a picture of {listing}",
            f"an image with {listing}",
        ]
    else:
        count = number_word(n)
        templates = [
            listing,
            f"{count} shapes: {listing}",
            f"{count} objects: {listing}",
            f"a scene with {listing}",
            f"an image containing {listing}",
            f"a picture of {listing}",
        ]
    caption = str(templates[int(rng.integers(len(templates)))])
    if background is not None and rng.random() < 0.15 and not caption.endswith("picture"):
        caption += f" on {with_article(BACKGROUND_WORDS[background])} background"
    return caption
