"""Needle keys and values: numbers, UUID-like strings and two-word names from our own word list.

The word list is written out here (plain English adjectives and concrete nouns), so generated
samples do not depend on a third-party list that may change between versions. A "word" key is
`adjective-noun`, as in RULER (e.g. `quiet-lantern`): 170 x 230 = 39,100 distinct keys.
"""

from __future__ import annotations

import random
import uuid
from typing import Literal

__all__ = [
    "ADJECTIVES",
    "NOUNS",
    "NeedleKind",
    "draw_distinct",
    "draw_number",
    "draw_uuid",
    "draw_word",
]

NeedleKind = Literal["words", "numbers", "uuids"]

ADJECTIVES: tuple[str, ...] = tuple(
    """
    able absent acidic agile airy amber ancient angry arctic ashen awake bald bare bitter
    blank bold bored brave brief bright brisk broad broken bronze busy calm careful chilly
    civil clean clever cloudy clumsy coastal cold copper cozy crimson crisp cruel curly
    damp dark dear deep dense dizzy dry dull dusty eager early earnest easy elder empty
    equal even exact faded faint fair false fancy fast fierce final firm flat fond formal
    fragile free fresh frozen full gentle giant glad golden grand grave green grey gritty
    hairy happy hard harsh hasty heavy hidden hollow honest humble hungry icy idle jolly
    keen kind large late lazy lean level light little lively lone loud lucky lunar mellow
    merry mighty mild misty modern moist narrow neat nimble noble noisy odd olive open
    orange pale plain plump polite proud purple quick quiet rapid rare raw ready rich rigid
    ripe rough round royal rusty sacred sandy scarlet secret sharp shiny short silent
    silver simple sleepy slim slow small smooth soft solar solid sour spare stable steep
    """.split()
)

NOUNS: tuple[str, ...] = tuple(
    """
    acorn anchor anvil apple apron arch arrow attic badge bagel ballot banjo barn barrel
    basket beacon beaker bean bell bench berry blanket blossom boat bolt bonnet boot bottle
    boulder bowl bracelet branch bread brick bridge broom bucket buckle bugle bundle butter
    button cabin cable cactus candle canoe canyon carpet carrot castle cedar cellar chain
    chalk channel chapel cherry chest chimney cider circus cliff clock cloud clover coin
    comet compass cookie cottage cradle crane crater crayon creek cricket crown
    cupboard curtain cushion daisy desert diamond dolphin donkey door dragon drum eagle
    easel engine falcon feather fence ferry fiddle field flag flute forest fountain fox
    garden gate geyser glacier glove goblet goose granite grape harbor harp hatchet hawk
    helmet hill honey hook horizon island ivory jacket jar jelly jungle kettle key kite
    ladder lagoon lake lamp lantern ledger lemon lighthouse lily locket lodge loom magnet
    mango maple marble meadow melon mirror mitten monkey moon mountain mushroom needle nest
    nickel notebook oak oar ocean orchard otter oven owl paddle palace pancake parrot
    pebble pencil pepper piano pillow pine planet plum pocket pond pony potato puddle
    pumpkin quill quilt rabbit radish rainbow raven ribbon river robin rocket saddle sail
    salmon satchel scarf shell shovel skillet sled spoon squirrel statue stove
    tablet teapot temple thimble thistle thunder tiger timber toast tower tractor trumpet
    tulip tunnel turnip umbrella valley velvet violin wagon walnut whistle willow window
    """.split()
)

_NUMBER_DIGITS = 7


def draw_number(rng: random.Random, digits: int = _NUMBER_DIGITS) -> str:
    """Draw a number with exactly `digits` digits (no leading zero), as a string."""
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def draw_word(rng: random.Random) -> str:
    """Draw an `adjective-noun` key such as `quiet-lantern`."""
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def draw_uuid(rng: random.Random) -> str:
    """Draw a random version-4 UUID string from `rng` (not from the OS entropy pool)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def draw_distinct(
    kind: NeedleKind,
    rng: random.Random,
    count: int,
    exclude: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """Draw `count` distinct keys or values of one kind, none of them in `exclude`.

    Args:
      kind: `words`, `numbers` (7 digits) or `uuids`.
      rng: the random source; the draws are a deterministic function of its state.
      count: how many.
      exclude: strings that must not be drawn (e.g. the real keys, when drawing distractors).

    Returns:
      The strings, in draw order.
    """
    draw = {"words": draw_word, "numbers": draw_number, "uuids": draw_uuid}.get(kind)
    if draw is None:
        raise ValueError(f"needle kind must be 'words', 'numbers' or 'uuids', got {kind!r}")
    drawn: list[str] = []
    seen = set(exclude)
    while len(drawn) < count:
        item = draw(rng)
        if item not in seen:
            seen.add(item)
            drawn.append(item)
    return drawn
