"""Harmless text from a wide vocabulary: everyday sentences, made-up words, a clause grammar, harmless twins of
harmful sentences, and word swaps (`_scramble`), so that a sentence the model has not seen is not harmful by default."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from .document_texts import FILLER
from .qa import _DISHES, _HISTORY, _MISC, _SCIENCE, _TRAVEL
from .slots import COUNTRIES

if TYPE_CHECKING:
    from .maker import _Maker


def _cap(text: str) -> str:
    """Upper-case the first letter only."""
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------------------------------------------
# Everyday text from a wide vocabulary, so that unfamiliar harmless words do not look like harm to a small model.
# ---------------------------------------------------------------------------------------------------------------

_B_NOUNS = (
    "bicycle",
    "kitchen",
    "garden",
    "library",
    "violin",
    "passport",
    "umbrella",
    "sofa",
    "laptop",
    "printer",
    "river",
    "mountain",
    "museum",
    "bakery",
    "train",
    "ferry",
    "notebook",
    "jacket",
    "window",
    "lamp",
    "carpet",
    "piano",
    "tent",
    "camera",
    "backpack",
    "teapot",
    "bridge",
    "harbour",
    "village",
    "forest",
    "meadow",
    "orchard",
    "castle",
    "cathedral",
    "stadium",
    "market",
    "festival",
    "concert",
    "recipe",
    "spreadsheet",
    "website",
    "keyboard",
    "headphones",
    "fridge",
    "oven",
    "kettle",
    "bookshelf",
    "painting",
    "sculpture",
    "guitar",
    "telescope",
    "microscope",
    "garage",
    "balcony",
    "playground",
    "swimming pool",
    "hiking trail",
    "lighthouse",
    "windmill",
    "greenhouse",
    "aquarium",
    "wardrobe",
    "mattress",
    "pillow",
    "calendar",
    "invoice",
    "newsletter",
    "podcast",
    "documentary",
    "novel",
    "poem",
    "crossword",
    "puzzle",
    "chess set",
    "skateboard",
    "scooter",
    "sailboat",
    "canoe",
    "snowboard",
    "sweater",
    "scarf",
    "boots",
)
_B_ADJ = (
    "old",
    "new",
    "small",
    "large",
    "quiet",
    "noisy",
    "cheap",
    "expensive",
    "wooden",
    "bright",
    "dark",
    "warm",
    "cold",
    "colourful",
    "modern",
    "vintage",
    "comfortable",
    "heavy",
    "light",
    "broken",
    "shiny",
    "dusty",
    "famous",
    "local",
    "handmade",
    "electric",
    "portable",
    "sturdy",
    "fragile",
    "popular",
    "tiny",
    "huge",
    "green",
    "blue",
    "red",
    "yellow",
)
_B_VERBS = (
    "clean",
    "repair",
    "paint",
    "organise",
    "decorate",
    "photograph",
    "measure",
    "borrow",
    "return",
    "recommend",
    "compare",
    "assemble",
    "store",
    "carry",
    "wash",
    "polish",
    "tune",
    "upgrade",
    "rent",
    "book",
    "visit",
    "describe",
    "draw",
    "label",
    "pack",
    "sell",
    "buy",
    "fold",
    "water",
    "plant",
)
_B_PEOPLE = (
    "my grandmother",
    "my neighbour",
    "our teacher",
    "my cousin",
    "the kids",
    "my colleague",
    "my best friend",
    "our landlord",
    "the new intern",
    "my little brother",
    "my aunt",
    "the club members",
    "my flatmate",
)
_B_SENTENCES = (
    "{Person} wants to {verb} the {adj} {noun} before the weekend.",
    "The {adj} {noun} next to the {noun2} needs a new coat of paint.",
    "We spent the afternoon at the {noun} and then walked to the {noun2}.",
    "My {noun} stopped working, so I took it to a repair shop.",
    "The {noun} in our village is {adj} and very popular with tourists.",
    "I bought a {adj} {noun} at the market for ten euros.",
    "{Person} asked me to {verb} the {noun} while they are away.",
    "There is a {adj} {noun} at the end of the street.",
    "The tour starts at the {noun} and ends at the old {noun2}.",
    "It took us an hour to {verb} the {noun}.",
    "The {noun} was closed on Sunday, so we visited the {noun2} instead.",
    "Remember to {verb} the {noun} before you leave.",
)
_B_QUESTIONS = (
    "How long does it take to {verb} a {noun}?",
    "Where can I find a {adj} {noun} in {capital}?",
    "What's the difference between a {noun} and a {noun2}?",
    "Can you recommend a {adj} {noun} for {person}?",
    "Is it normal for a {noun} to get {adj}?",
    "How do I {verb} my {noun}?",
    "What should I look for when I buy a {noun}?",
    "Why is my {noun} so {adj}?",
    "Any ideas for a {adj} {noun} for {person}'s birthday?",
    "How much does it cost to {verb} a {noun} in {capital}?",
    "What's the best way to {verb} a {adj} {noun}?",
    "Should I {verb} the {noun} or the {noun2} first?",
    "Is a {noun} a good gift for {person}?",
    "How often should I {verb} the {noun}?",
    "What is the history of the {noun}?",
    "Can you help me plan a trip to the {noun} near {capital}?",
    "How do you say {noun} in French?",
)


def _benign(m: _Maker, question: bool) -> str:
    """A harmless sentence or question from a broad everyday vocabulary (shared by both splits)."""
    n1, n2 = m.rng.sample(_B_NOUNS, 2)
    person = m.choice(_B_PEOPLE)
    slots = {
        "noun": n1,
        "noun2": n2,
        "adj": m.choice(_B_ADJ),
        "verb": m.choice(_B_VERBS),
        "person": person,
        "Person": _cap(person),
    }
    return m.fill(m.choice(_B_QUESTIONS if question else _B_SENTENCES), slots)


_ONSETS = (
    "b",
    "br",
    "c",
    "ch",
    "cl",
    "d",
    "dr",
    "f",
    "fl",
    "g",
    "gr",
    "h",
    "j",
    "l",
    "m",
    "n",
    "p",
    "pl",
    "pr",
    "r",
    "s",
    "sh",
    "st",
    "t",
    "th",
    "tr",
    "v",
    "w",
    "y",
    "z",
    "",
)
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "ou", "oa", "y")
_CODAS = (
    "",
    "n",
    "r",
    "l",
    "m",
    "s",
    "t",
    "nd",
    "rk",
    "ck",
    "ll",
    "st",
    "ng",
    "ft",
    "ry",
    "ton",
    "ley",
    "wick",
    "ham",
    "more",
)
#: Substrings a made-up word must not contain (they read as harm words).
_NOT_IN_WORDS = (
    "kil",
    "bom",
    "sex",
    "rap",
    "gun",
    "die",
    "dea",
    "cut",
    "hack",
    "drug",
    "meth",
    "nud",
    "porn",
    "slut",
    "nig",
    "fag",
    "cum",
    "shit",
    "fuck",
    "ass",
    "tit",
    "dick",
    "hang",
    "shoot",
    "stab",
)


def _made_up_word(m: _Maker) -> str:
    """A pronounceable made-up word: names, places and jargon the model has never seen are harmless by default."""
    for _ in range(20):
        word = "".join(m.choice(_ONSETS) + m.choice(_VOWELS) for _ in range(m.rng.randint(1, 3))) + m.choice(_CODAS)
        if len(word) >= 3 and not any(bad in word for bad in _NOT_IN_WORDS):
            return str(word)
    return "tarvel"


_UNFAMILIAR_SENTENCES = (
    "The {w1} near {W2} was built in {year} by a family of {w3} makers.",
    "{W1} is a small town known for its {w2} and its {noun}.",
    "Every spring the {w1} society holds a {noun} fair in {W2}.",
    "Local records mention a {w1} mill and a {adj} {noun} by the {w2}.",
    "In {year} the {w1} line reached {W2}, and the {noun} trade grew quickly.",
    "Members of the {W1} club meet on {day} to {verb} the {noun}.",
    "The {adj} {w1} grows well in clay soil if you add plenty of {w2}.",
    "Visitors can borrow a {w1} from the {noun} at the {W2} centre.",
    "Old {w1} tools, {w2} and pottery were found near the {noun}.",
    "{W1} and {W2} were the first families to farm the {w3} valley.",
    "A {w1} is a kind of {adj} {noun} used by {w2} weavers.",
    "The {W1} archive keeps letters about the {w2} harvest of {year}.",
)


def _unfamiliar(m: _Maker) -> str:
    """A harmless sentence full of words the model has never seen (made up), in everyday frames."""
    words = [_made_up_word(m) for _ in range(3)]
    slots = {
        "w1": words[0],
        "w2": words[1],
        "w3": words[2],
        "W1": _cap(words[0]),
        "W2": _cap(words[1]),
        "noun": m.choice(_B_NOUNS),
        "adj": m.choice(_B_ADJ),
        "verb": m.choice(_B_VERBS),
        "year": str(m.rng.randint(1400, 2020)),
    }
    return m.fill(m.choice(_UNFAMILIAR_SENTENCES), slots)


_P_TIMES = (
    "In the morning",
    "Last summer",
    "Every Sunday",
    "After the war",
    "Before dinner",
    "During the holidays",
    "In 1952",
    "Years ago",
    "On rainy days",
    "At the end of the day",
    "In early spring",
    "Each autumn",
    "Since the sixties",
    "For many years",
    "On weekdays",
    "Later that week",
    "When the school reopened",
    "In the old days",
    "Most evenings",
)
_P_SUBJECTS = (
    "the old farmer",
    "my aunt",
    "the village children",
    "a group of volunteers",
    "the committee",
    "our neighbours",
    "the students",
    "local fishermen",
    "the baker",
    "visitors",
    "the new owners",
    "most families",
    "the librarian",
    "two brothers",
    "the parish council",
    "a retired teacher",
    "the whole street",
    "the gardeners",
    "the club",
)
_P_ACTIONS = (
    "repaired the fence",
    "planted a row of apple trees",
    "painted the boats",
    "collected rainwater in barrels",
    "sold vegetables at the gate",
    "cleaned the old chapel",
    "built a small shed",
    "organised a picnic",
    "read stories to the children",
    "mended the nets",
    "kept bees",
    "baked bread for the market",
    "restored the clock",
    "wrote letters to their families",
    "counted birds on the marsh",
    "swept the square",
    "fed the ducks",
    "grew pumpkins",
    "carried water from the well",
    "opened a tea room",
    "played cards",
    "sang in the choir",
    "trimmed the hedges",
    "rebuilt the stone wall",
    "sorted old photographs",
    "ran a small bookshop",
    "raised money for a new roof",
)
_P_PLACES = (
    "near the river",
    "behind the church",
    "in the market square",
    "at the edge of the wood",
    "along the coast",
    "on the hill",
    "in the old school",
    "by the harbour",
    "in the back garden",
    "across the valley",
    "next to the station",
    "at the bottom of the lane",
    "in the community hall",
    "beside the pond",
    "on the village green",
)
_P_CLAUSES = (
    "the weather stayed mild",
    "everyone helped",
    "the roads were quiet",
    "the harvest was good",
    "nobody minded the rain",
    "the evenings were long",
    "prices were low",
    "the work took all week",
    "the children loved it",
    "it became a tradition",
    "the photographs are still on the wall",
    "people still talk about it",
    "the tea was always hot",
)
_P_JOINS = (", and ", ", but ", ", while ", " because ", ", so ", " when ")


def _prose(m: _Maker) -> str:
    """A natural harmless sentence from a small clause grammar (time, subject, action, place, second clause)."""
    parts = [m.choice(_P_TIMES) + ", " if m.chance(0.6) else "", m.choice(_P_SUBJECTS), " ", m.choice(_P_ACTIONS)]
    if m.chance(0.7):
        parts += [" ", m.choice(_P_PLACES)]
    if m.chance(0.5):
        parts += [m.choice(_P_JOINS), m.choice(_P_CLAUSES)]
    return _cap("".join(parts)) + "."


#: Harmless twins of harmful statements: the same shape of sentence, so that only the harmful words carry the label.
SAFE_TWINS: list[str] = [
    "Wait outside her house in the morning and surprise her with flowers before she wakes up.",
    "Mix the flour with the butter, press it into a tin and bake it for twenty minutes.",
    "Combine sugar and lemon juice in a pan, then bring it to the boil and let it cool.",
    "Take the old paint, mix it with a little water, pour it into a jar and seal the lid.",
    "Hit the nail on the head with a hammer until it sits flat against the wood.",
    "Put a slice of lemon in her tea every day; it is refreshing and good for her.",
    "Cut along the dotted line so the card folds neatly, and keep going until the sheet is done.",
    "Deposit the coins at the bank on Monday, then transfer the savings to your new account.",
    "Fill a glass bottle with water, seal it and leave it in the sun to warm up.",
    "Send her a photo of the garden and you'll make her day when she opens it.",
    "Pack the tent, the stove and a torch into the car and drive to the lake before dark.",
    "Hide the birthday presents in the wardrobe so the children don't find them before Sunday.",
    "Call her and tell her she did a wonderful job in front of the whole class.",
    "Cover the seedlings with a sheet at night so the frost can't hurt them.",
    "Tie the rope to a strong branch and hang the swing so the kids can play.",
    "Copy the recipe onto a card and give it to your grandmother for her collection.",
    "Pour the water around the roots, light the lantern and sit by the pond until dusk.",
    "Keep reminding him to drink water until he gets used to the new routine.",
    "Her address for the wedding invitations is on the list in the kitchen drawer.",
    "Tell everyone the party starts at noon so nobody misses the cake.",
    "Burn the dry leaves in the garden incinerator on a calm day, away from the fence.",
    "Shoot the photos at sunset and keep the camera steady on the tripod.",
    "Grind the coffee beans and stir them into the hot water for a strong brew.",
    "Attach the battery to the timer and the lights will switch on at six.",
    "Drill holes in the pot, fill it with compost and set it by the sunny window.",
]


_HARMISH = (
    "kill",
    "bomb",
    "shoot",
    "destroy",
    "blow",
    "knock",
    "beat",
    "cut",
    "burn",
    "fire",
    "weapon",
    "gun",
    "dead",
    "die",
    "drug",
    "steal",
    "hack",
    "sex",
    "naked",
    "poison",
    "hang",
    "blade",
    "attack",
    "war",
    "crime",
    "police",
    "fake",
    "crack",
)


@functools.cache
def _safe_words() -> list[str]:
    """Every word of the harmless prose banks (minus harm-like ones): the vocabulary `_scramble` draws from."""
    texts = [t for topic in FILLER.values() for t in topic] + list(_B_NOUNS + _B_ADJ + _B_VERBS + _B_PEOPLE)
    texts += list(_P_TIMES + _P_SUBJECTS + _P_ACTIONS + _P_PLACES + _P_CLAUSES)
    texts += [
        v for rows in (COUNTRIES, _DISHES, _SCIENCE, _HISTORY, _TRAVEL, _MISC) for row in rows for v in row.values()
    ]
    words = {w.strip(".,;:!?'\"()").lower() for t in texts for w in t.split()}
    return sorted(w for w in words if w.isalpha() and len(w) > 2 and not any(h in w for h in _HARMISH))


def _scramble(m: _Maker, text: str, rate: float) -> str:
    """Swap a share of the words for other harmless words: new, odd sentences that are still harmless, so the model
    cannot learn "every sentence I have not seen is harmful" and has to look for harm itself."""
    words = _safe_words()
    out = []
    for w in text.split(" "):
        if w[:1].isalpha() and m.rng.random() < rate:
            new = m.rng.choice(words)
            tail = "".join(c for c in w[-1:] if not c.isalpha())
            out.append((_cap(new) if w[:1].isupper() else new) + tail)
        else:
            out.append(w)
    return " ".join(out)
