"""CelebA-Dialog style captions for the synthetic faces: the five levels in words, plus gender.

Every sentence for a level contains that level's key phrase (`LEVEL_PHRASES`), so a caption can be
checked against its levels; the sentence frames around the phrases vary per face.
"""

from __future__ import annotations

import numpy as np

LEVEL_PHRASES: dict[str, tuple[str, ...]] = {
    "bangs": (
        "no bangs",
        "very short bangs",
        "short bangs covering a small part",
        "medium bangs covering half",
        "long bangs covering most",
        "extremely long bangs",
    ),
    "eyeglasses": (
        "no eyeglasses",
        "rimless eyeglasses",
        "thin frame eyeglasses",
        "thick frame eyeglasses",
        "thin frame sunglasses",
        "thick frame sunglasses",
    ),
    "beard": ("no beard", "a light stubble", "a heavy stubble", "a short goatee", "a full short beard",
              "a long bushy beard"),
    "smiling": ("no smile", "a faint smile", "a gentle closed-mouth smile", "a smile showing teeth",
                "a big open-mouthed smile", "a huge laughing smile"),
    "age": ("a child", "a young adult", "thirties", "forties", "fifties", "over sixty"),
}

# Short names for the labelled sample grid.
LEVEL_LABELS: dict[str, tuple[str, ...]] = {
    "bangs": ("none", "20%", "40%", "60%", "80%", "100%"),
    "eyeglasses": ("none", "rimless", "thin frame", "thick frame", "thin sun", "thick sun"),
    "beard": ("none", "light stubble", "stubble", "goatee", "short beard", "bushy"),
    "smiling": ("none", "faint", "closed", "teeth", "big", "laughing"),
    "age": ("child", "15-30", "30-40", "40-50", "50-60", "60+"),
}

# {S} subject, {P} pronoun, {p} possessive, {x} the key phrase
_TEMPLATES: dict[str, dict[int | str, tuple[str, ...]]] = {
    "bangs": {
        0: ("{S} has {x} at all.", "{S} doesn't have bangs; there are {x} on {p} forehead."),
        1: ("{S} has {x} that barely touch {p} forehead.", "{S} has got {x}, only a tiny part of the forehead is covered."),
        2: ("{S} has {x} of {p} forehead.", "{S} wears {x} of the forehead."),
        3: ("{S} has {x} of {p} forehead.", "{S} wears {x} of the forehead."),
        4: ("{S} has {x} of {p} forehead.", "{S} wears {x} of the forehead."),
        5: ("{S} has {x} that cover the entire forehead.", "{S} has {x} covering {p} whole forehead and eyebrows."),
    },
    "eyeglasses": {
        0: ("{P} wears {x}.", "There are {x} on {p} face."),
        "any": ("{P} wears {x}.", "{P} is wearing {x}.", "{P} has {x} on."),
    },
    "beard": {
        0: ("{P} has {x} at all.", "{P} has {x}."),
        "any": ("{P} has {x}.", "{P} has got {x}.", "There is {x} on {p} face."),
    },
    "smiling": {
        0: ("{P} looks serious with {x}.", "There is {x} on {p} face."),
        5: ("{P} is laughing with {x}.", "{P} has {x} and is laughing."),
        "any": ("{P} has {x}.", "{P} shows {x}.", "There is {x} on {p} face."),
    },
    "age": {
        0: ("{P} is {x}.", "{P} looks like {x} under fifteen."),
        1: ("{P} is {x}.", "{P} looks like {x} in {p} twenties."),
        5: ("{P} is {x} years old.", "{P} looks elderly, {x}."),
        "any": ("{P} is in {p} {x}.", "{P} looks like someone in {p} {x}."),
    },
}

_SUBJECTS = {
    (True, False): ("This man", "The man", "This gentleman", "The guy"),
    (False, False): ("This woman", "The woman", "This lady", "The lady"),
    (True, True): ("This boy", "The boy", "This kid"),
    (False, True): ("This girl", "The girl", "This kid"),
}


def caption(levels, male: bool, rng: np.random.Generator) -> str:
    """One caption: five sentences, one per attribute in schema order, the first naming the person."""
    bangs, glasses, beard, smile, age = (int(v) for v in levels)
    subject = _SUBJECTS[(male, age == 0)] if not (age == 0 and beard) else ("This kid", "The kid")
    words = {
        "S": subject[rng.integers(len(subject))],
        "P": "He" if male else "She",
        "p": "his" if male else "her",
    }
    sentences = []
    for attr, level in zip(LEVEL_PHRASES, (bangs, glasses, beard, smile, age)):
        options = _TEMPLATES[attr].get(level, _TEMPLATES[attr].get("any"))
        sentences.append(options[rng.integers(len(options))].format(x=LEVEL_PHRASES[attr][level], **words))
    return " ".join(sentences)


def level_captions(levels, seed: int = 0) -> list[str]:
    """Captions that state each row of `levels` (N, 5) in words, alternating he/she, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    return [caption(row, male=bool(i % 2), rng=rng) for i, row in enumerate(levels)]
