"""Write ``corpus.txt``: a few hundred KB of English-like tales from a small random grammar.

The text is generated, so it is free of anyone's copyright (dedicated to the public domain) and
needs no download. It has what a character model can learn beyond letter frequencies: a few
hundred words and their spellings, capitals after a full stop, quoted speech, chapter headings.
The output depends on the seed alone: the generator draws only ``random.Random.random()``, whose
sequence Python keeps stable across versions (``choice`` and ``randint`` may change).

    python examples/charlm/make_corpus.py            # rewrites examples/charlm/corpus.txt
"""

from __future__ import annotations

import random
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

CORPUS = Path(__file__).with_name("corpus.txt")
SEED = 1859
TARGET_CHARS = 320_000

NAMES = [
    "Ada", "Bram", "Cora", "Dunstan", "Edith", "Fenwick", "Greta", "Hollis", "Ivo", "Juniper",
    "Kestrel", "Linnet", "Morrow", "Nell", "Oswin", "Pim", "Quill", "Rowan", "Sorrel", "Tamsin",
]  # fmt: skip
ANIMALS = [
    "fox", "heron", "badger", "otter", "wren", "hare", "mole", "crow", "stag", "owl",
    "weasel", "lark", "toad", "beetle", "salmon", "goat",
]  # fmt: skip
THINGS = [
    "lantern", "kettle", "boat", "ladder", "letter", "key", "basket", "bell", "map", "coat",
    "loaf", "candle", "rope", "wheel", "drum", "compass", "anchor", "quilt", "spoon", "clock",
]  # fmt: skip
PLACES = [
    "mill", "harbour", "orchard", "marsh", "bridge", "meadow", "forest", "chapel", "market",
    "well", "tower", "valley", "quarry", "island", "garden", "cellar",
]  # fmt: skip
ADJECTIVES = [
    "old", "small", "quiet", "bright", "crooked", "patient", "hungry", "clever", "grey",
    "golden", "muddy", "gentle", "stubborn", "weary", "merry", "silver", "broken", "tall",
    "narrow", "cold", "warm", "lonely", "proud", "curious",
]  # fmt: skip
SEASONS = ["spring", "summer", "autumn", "winter"]
TIMES = [
    "at dawn", "at dusk", "before supper", "after the rain", "in the morning",
    "late at night", "on the first day of {season}", "when the {season} came", "at noon",
    "on market day", "by the light of the moon",
]  # fmt: skip
TRANSITIVE = [
    ("carried", "carry"), ("found", "find"), ("mended", "mend"), ("lost", "lose"),
    ("painted", "paint"), ("buried", "bury"), ("sold", "sell"), ("borrowed", "borrow"),
    ("counted", "count"), ("polished", "polish"), ("hid", "hide"), ("opened", "open"),
    ("watched", "watch"), ("followed", "follow"), ("praised", "praise"),
]  # fmt: skip
INTRANSITIVE = [
    "slept", "sang", "waited", "laughed", "wandered", "listened", "wept", "danced", "hurried",
    "whistled", "rested", "shivered", "grumbled",
]  # fmt: skip
ADVERBS = [
    "slowly", "quickly", "softly", "gladly", "carefully", "twice", "alone", "again", "happily",
    "badly", "well", "loudly",
]  # fmt: skip
PREPOSITIONS = ["to", "from", "past", "beside", "behind", "towards", "across", "under", "near"]
FEELINGS = ["glad", "afraid", "tired", "sure", "sorry", "hungry", "lost", "late", "ready"]
EXCLAMATIONS = ["Look", "Hush", "Listen", "Come quickly", "Good morning", "Oh dear", "Well now"]
MORALS = [
    "slow hands mend what quick hands break",
    "a shared loaf is the longest loaf",
    "the river keeps no promises",
    "whoever counts the bells forgets the hour",
    "a lantern is only as brave as its keeper",
    "the smallest key opens the oldest door",
    "nobody sells the wind twice",
]
ROMAN = [
    (100, "C"),
    (90, "XC"),
    (50, "L"),
    (40, "XL"),
    (10, "X"),
    (9, "IX"),
    (5, "V"),
    (4, "IV"),
    (1, "I"),
]


class Grammar:
    """Draws words and sentences; every choice goes through ``pick``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, items: Sequence[str]) -> str:
        return items[int(self.rng.random() * len(items))]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def character(self) -> str:
        name, adjective, animal = self.pick(NAMES), self.pick(ADJECTIVES), self.pick(ANIMALS)
        if self.chance(0.5):
            return f"{name} the {adjective} {animal}"
        return f"{name}" if self.chance(0.5) else f"the {adjective} {animal}"

    def thing(self) -> str:
        if self.chance(0.5):
            return f"the {self.pick(ADJECTIVES)} {self.pick(THINGS)}"
        noun = self.pick(THINGS)
        return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"

    def place(self) -> str:
        return (
            f"the {self.pick(PLACES)}"
            if self.chance(0.7)
            else f"the {self.pick(ADJECTIVES)} {self.pick(PLACES)}"
        )

    def time(self) -> str:
        return self.pick(TIMES).format(season=self.pick(SEASONS))

    def clause(self) -> str:
        kind = self.rng.random()
        if kind < 0.45:
            past, _ = TRANSITIVE[int(self.rng.random() * len(TRANSITIVE))]
            tail = f" {self.pick(PREPOSITIONS)} {self.place()}" if self.chance(0.6) else ""
            return f"{self.character()} {past} {self.thing()}{tail}"
        if kind < 0.75:
            adverb = f" {self.pick(ADVERBS)}" if self.chance(0.5) else ""
            return f"{self.character()} {self.pick(INTRANSITIVE)}{adverb} {self.pick(PREPOSITIONS)} {self.place()}"
        if kind < 0.9:
            return f"{self.character()} was {self.pick(FEELINGS)}"
        return f"nobody had seen {self.thing()} since {self.pick(SEASONS)}"

    def sentence(self) -> str:
        kind = self.rng.random()
        if kind < 0.35:
            text = f"{self.time()}, {self.clause()}"
        elif kind < 0.55:
            text = f"{self.clause()}, and {self.clause()}"
        elif kind < 0.65:
            text = f"{self.clause()}, but {self.clause()}"
        elif kind < 0.85:
            return self.speech()
        else:
            text = self.clause()
        return text[0].upper() + text[1:] + "."

    def speech(self) -> str:
        _, present = TRANSITIVE[int(self.rng.random() * len(TRANSITIVE))]
        if self.chance(0.4):
            line = f"{self.pick(EXCLAMATIONS)}, we must {present} {self.thing()} {self.time()}"
        else:
            line = f"I am {self.pick(FEELINGS)}, so I will {present} {self.thing()}"
        return f'"{line}," said {self.pick(NAMES)}.'

    def paragraph(self) -> str:
        count = 2 + int(self.rng.random() * 5)
        return " ".join(self.sentence() for _ in range(count))

    def chapter(self, number: int) -> str:
        title = f"{self.pick(ADJECTIVES)} {self.pick(THINGS)}".upper()
        head = f"CHAPTER {roman(number)}. THE {title}"
        paragraphs = [self.paragraph() for _ in range(4 + int(self.rng.random() * 6))]
        moral = f"And the moral is this: {self.pick(MORALS)}."
        body = [textwrap.fill(p, width=72) for p in [*paragraphs, moral]]
        return "\n\n".join([head, *body])


def roman(number: int) -> str:
    out = ""
    for value, letters in ROMAN:
        while number >= value:
            out, number = out + letters, number - value
    return out


def generate(seed: int = SEED, target_chars: int = TARGET_CHARS) -> str:
    grammar, size = Grammar(seed), 0
    chapters: list[str] = []
    while size < target_chars:
        chapter = grammar.chapter(len(chapters) + 1)
        chapters.append(chapter)
        size += len(chapter) + 3
    return "TALES OF THE SMALL HARBOUR\n\n\n" + "\n\n\n".join(chapters) + "\n"


if __name__ == "__main__":
    CORPUS.write_text(generate(), encoding="utf-8")
    sys.stdout.write(f"wrote {CORPUS} ({CORPUS.stat().st_size} bytes)\n")
