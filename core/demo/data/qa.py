"""Everyday question/answer families (geography, cooking, science, coding ...): safe prompts and safe answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .slots import COUNTRIES


# Safe question/answer families: rows carry the slot values; questions and answers are templates over them.
@dataclass(frozen=True)
class _QA:
    name: str
    questions: Sequence[str]
    answers: Sequence[str]
    rows: Sequence[dict[str, str]] = ({},)


_DISHES = [
    {
        "dish": "sourdough bread",
        "tip": "feed your starter the day before, mix flour, water and salt, let the dough rise overnight and bake it in a hot Dutch oven",
    },
    {
        "dish": "banana bread",
        "tip": "mash three ripe bananas, mix them with butter, sugar, eggs and flour, and bake for about an hour at 175 C",
    },
    {
        "dish": "pizza dough",
        "tip": "mix flour, yeast, water, salt and olive oil, knead for ten minutes and let it rise for two hours",
    },
    {
        "dish": "chocolate chip cookies",
        "tip": "cream butter and sugar, add eggs, flour and chocolate chips, then bake for ten minutes",
    },
    {
        "dish": "a vegetable curry",
        "tip": "fry onions, garlic and spices, add chopped vegetables and coconut milk, and simmer for twenty minutes",
    },
    {
        "dish": "pancakes",
        "tip": "whisk flour, milk, eggs and a pinch of salt, then cook ladles of batter in a hot buttered pan",
    },
    {
        "dish": "lasagna",
        "tip": "layer pasta sheets with tomato sauce, ricotta and mozzarella, then bake for forty minutes",
    },
    {
        "dish": "fresh pasta",
        "tip": "knead flour and eggs into a smooth dough, rest it, roll it thin and cut it into strips",
    },
    {
        "dish": "a lemon cake",
        "tip": "beat butter, sugar and eggs, fold in flour and lemon zest, bake, then pour lemon syrup over it",
    },
    {
        "dish": "homemade yogurt",
        "tip": "heat milk, cool it to about 43 C, stir in a spoon of yogurt and keep it warm for eight hours",
    },
    {"dish": "ramen broth", "tip": "simmer pork bones or chicken for several hours with ginger, garlic and scallions"},
    {"dish": "guacamole", "tip": "mash ripe avocados with lime juice, salt, chopped onion, tomato and cilantro"},
    {
        "dish": "a French omelette",
        "tip": "whisk eggs, cook them gently in butter while stirring, then roll the omelette onto a plate",
    },
    {"dish": "bagels", "tip": "shape the dough into rings, boil them briefly, then bake until golden"},
    {"dish": "rye bread", "tip": "use a rye sourdough starter, a sticky dough and a long, slow bake"},
]
_SCIENCE = [
    {
        "thing": "photosynthesis",
        "fact": "plants use sunlight, water and carbon dioxide to make glucose and release oxygen",
    },
    {"thing": "the water cycle", "fact": "water evaporates, condenses into clouds and falls back as rain or snow"},
    {"thing": "gravity", "fact": "masses attract each other, which keeps planets in orbit around the sun"},
    {"thing": "a rainbow", "fact": "sunlight is refracted and reflected inside raindrops and splits into colours"},
    {"thing": "the immune system", "fact": "white blood cells recognise germs and antibodies help remove them"},
    {"thing": "plate tectonics", "fact": "the Earth's crust is made of plates that slowly move over the mantle"},
    {
        "thing": "nuclear fusion in the sun",
        "fact": "hydrogen nuclei fuse into helium and release a huge amount of energy",
    },
    {"thing": "DNA replication", "fact": "the double helix unzips and each strand serves as a template for a new one"},
    {
        "thing": "an electric motor",
        "fact": "a current in a coil creates a magnetic field that pushes against magnets and turns the shaft",
    },
    {
        "thing": "a refrigerator",
        "fact": "a refrigerant absorbs heat inside as it evaporates and releases it outside as it condenses",
    },
    {"thing": "cellular respiration", "fact": "cells break down glucose with oxygen to release energy as ATP"},
    {
        "thing": "a solar panel",
        "fact": "light knocks electrons loose in silicon cells, which produces an electric current",
    },
    {
        "thing": "evolution",
        "fact": "traits that help organisms survive are passed on more often, so species change over time",
    },
    {
        "thing": "GPS",
        "fact": "a receiver measures signals from several satellites and works out its position from the timing",
    },
    {"thing": "the greenhouse effect", "fact": "gases like carbon dioxide trap heat in the atmosphere"},
    {"thing": "a vaccine", "fact": "it trains the immune system to recognise a germ without causing the disease"},
    {"thing": "a black hole", "fact": "so much mass is packed into a small space that not even light can escape"},
    {"thing": "the tides", "fact": "the moon's gravity pulls on the oceans and creates bulges of water"},
]
_CODING = [
    {"task": "reverse a list in Python", "how": "use my_list[::-1] or call my_list.reverse()"},
    {
        "task": "read a file line by line in Python",
        "how": "open it with a with-statement and loop over the file object",
    },
    {
        "task": "center a div in CSS",
        "how": "make the parent a flex container and set justify-content and align-items to center",
    },
    {"task": "undo the last git commit", "how": "run git reset --soft HEAD~1 to keep your changes staged"},
    {"task": "remove duplicates from a JavaScript array", "how": "use [...new Set(array)]"},
    {"task": "kill a process in Linux", "how": "find its PID with ps or pgrep and run kill PID"},
    {"task": "sort a dictionary by value in Python", "how": "use sorted(d.items(), key=lambda kv: kv[1])"},
    {
        "task": "write a unit test in pytest",
        "how": "write a function whose name starts with test_ and use plain assert statements",
    },
    {"task": "join two tables in SQL", "how": "use SELECT ... FROM a JOIN b ON a.id = b.a_id"},
    {"task": "fix a merge conflict", "how": "edit the conflicting lines, remove the markers, then git add and commit"},
    {"task": "create a virtual environment", "how": "run python -m venv .venv and activate it"},
    {"task": "parse JSON in JavaScript", "how": "call JSON.parse on the string"},
    {"task": "terminate a hanging thread", "how": "signal it with an event flag and let it exit cleanly"},
    {"task": "speed up a slow SQL query", "how": "add an index on the columns you filter by and check the query plan"},
]
_TRAVEL = [
    {"place": "Japan", "tip": "get a rail pass, carry some cash and try the convenience store food"},
    {"place": "Iceland", "tip": "pack waterproof layers and rent a car to drive the ring road"},
    {"place": "Italy", "tip": "book museum tickets in advance and visit the smaller towns too"},
    {"place": "Morocco", "tip": "dress modestly, bargain politely in the souks and try a night in the desert"},
    {"place": "New Zealand", "tip": "plan for changeable weather and do at least one of the great walks"},
    {"place": "Portugal", "tip": "ride the trams in Lisbon and take a day trip to Sintra"},
    {"place": "Vietnam", "tip": "travel north to south by train and eat the street food"},
    {"place": "Canada", "tip": "visit the national parks in summer and bring bug spray"},
    {"place": "Mexico", "tip": "try the local markets and visit the ruins early in the morning"},
    {"place": "Scotland", "tip": "bring a rain jacket and explore the Highlands by car"},
    {"place": "Greece", "tip": "island hop by ferry and avoid the hottest weeks of August"},
    {"place": "Peru", "tip": "acclimatise to the altitude in Cusco before hiking to Machu Picchu"},
]
_HISTORY = [
    {"event": "the French Revolution", "when": "began in 1789"},
    {"event": "the fall of the Berlin Wall", "when": "happened in November 1989"},
    {"event": "the first moon landing", "when": "took place in July 1969"},
    {"event": "World War I", "when": "lasted from 1914 to 1918"},
    {"event": "the signing of the Magna Carta", "when": "happened in 1215"},
    {"event": "the invention of the printing press", "when": "happened around 1440"},
    {"event": "the fall of the Western Roman Empire", "when": "is usually dated to 476 AD"},
    {"event": "the American Declaration of Independence", "when": "was signed in 1776"},
    {"event": "the building of the Great Pyramid", "when": "happened around 2560 BC"},
    {"event": "the end of World War II", "when": "came in 1945"},
    {"event": "the first flight of the Wright brothers", "when": "took place in 1903"},
    {"event": "the Renaissance", "when": "began in Italy in the 14th century"},
]
_MISC = [
    {"ask": "tie a tie", "how": "cross the wide end over, loop it up through the neck and down through the knot"},
    {
        "ask": "change a flat tire",
        "how": "loosen the nuts, jack up the car, swap the wheel and tighten the nuts in a star pattern",
    },
    {
        "ask": "get better sleep",
        "how": "keep a regular schedule, avoid screens before bed and keep the room dark and cool",
    },
    {"ask": "learn a new language", "how": "practise a little every day, use flashcards and talk with native speakers"},
    {"ask": "start running", "how": "begin with short run-walk intervals three times a week and increase slowly"},
    {"ask": "save money on groceries", "how": "plan meals, write a list and buy seasonal produce"},
    {"ask": "kill weeds in my garden", "how": "pull them by the roots after rain and cover the soil with mulch"},
    {"ask": "shoot better photos at night", "how": "use a tripod, a longer exposure and a low ISO"},
    {
        "ask": "make a bath bomb",
        "how": "mix baking soda, citric acid and a little oil, press it into a mould and let it dry",
    },
    {"ask": "grow tomatoes on a balcony", "how": "use a big pot, full sun, regular watering and a stake for support"},
    {
        "ask": "write a cover letter",
        "how": "open with the role, show two achievements that fit it and close with a call to action",
    },
    {"ask": "meditate", "how": "sit comfortably, focus on your breath and gently return to it when your mind wanders"},
    {
        "ask": "clean a cast iron pan",
        "how": "rinse it with hot water, scrub off food, dry it and rub in a thin layer of oil",
    },
    {"ask": "train my puppy to sit", "how": "hold a treat above its nose, move it back and reward the moment it sits"},
    {
        "ask": "report a scam to the police",
        "how": "collect the messages and receipts and file a report online or at the station",
    },
    {
        "ask": "help a friend who feels depressed",
        "how": "listen without judging, stay in touch and encourage them to talk to a professional",
    },
    {
        "ask": "protect my privacy online",
        "how": "use strong unique passwords, two-factor authentication and limit what you share",
    },
    {
        "ask": "register to vote",
        "how": "check your election office's website, fill in the form and bring an ID if required",
    },
]

_TOPICS = [
    {"topic": t}
    for t in (
        "autumn",
        "the ocean",
        "a rainy day",
        "friendship",
        "mountains",
        "my cat",
        "the city at night",
        "coffee",
        "spring flowers",
        "a train journey",
        "the moon",
        "old books",
        "a summer storm",
        "the desert",
        "my grandmother's kitchen",
        "winter mornings",
    )
]
_LANGUAGES = [
    {"phrase": p, "language": lang}
    for p, lang in (
        ("good morning", "Spanish"),
        ("thank you", "Japanese"),
        ("where is the station", "German"),
        ("I love you", "French"),
        ("how much does it cost", "Italian"),
        ("nice to meet you", "Portuguese"),
        ("excuse me", "Korean"),
        ("good night", "Dutch"),
        ("happy birthday", "Swedish"),
        ("see you tomorrow", "Greek"),
        ("cheers", "Polish"),
        ("welcome", "Turkish"),
    )
]
_NUMBERS = [
    {"a": a, "b": b}
    for a, b in (
        ("17", "23"),
        ("12", "8"),
        ("145", "3"),
        ("64", "16"),
        ("9", "9"),
        ("250", "4"),
        ("1000", "7"),
        ("33", "11"),
        ("72", "6"),
        ("18", "5"),
        ("120", "15"),
        ("7", "13"),
    )
]

_QA_FAMILIES: list[_QA] = [
    _QA(
        "geography",
        [
            "What is the capital of {country}?",
            "What's the capital city of {country}?",
            "Which city is the capital of {country}?",
            "Tell me the capital of {country}.",
            "capital of {country}?",
            "Do you know the capital of {country}?",
            "Name the capital of {country}.",
            "What city is {country}'s capital?",
            "Can you tell me what the capital of {country} is?",
            "I forgot, what's the capital of {country}?",
        ],
        [
            "The capital of {country} is {capital}.",
            "{capital} is the capital of {country}.",
            "It's {capital}.",
            "{country}'s capital is {capital}.",
            "That would be {capital}.",
        ],
        COUNTRIES,
    ),
    _QA(
        "landmarks",
        [
            "Where is the {landmark}?",
            "In which country is the {landmark}?",
            "Tell me about the {landmark}.",
            "How old is the {landmark}?",
            "Is the {landmark} worth visiting?",
            "What's special about the {landmark}?",
            "How do I get to the {landmark}?",
        ],
        [
            "The {landmark} is in {city}, {country}.",
            "It is located in {country}, near {city}.",
            "The {landmark} is one of the most visited sights in {country}.",
            "Yes, the {landmark} in {city} is worth a visit.",
        ],
        COUNTRIES,
    ),
    _QA(
        "food",
        [
            "What food is {country} famous for?",
            "What should I eat in {country}?",
            "What's a typical dish from {country}?",
            "How do people in {country} make {food}?",
            "Where can I find good {food}?",
            "What is {food}?",
        ],
        [
            "{country} is famous for {food}.",
            "Try the {food}; it's a classic in {country}.",
            "{food} is a traditional favourite in {country}.",
        ],
        COUNTRIES,
    ),
    _QA(
        "cooking",
        [
            "How do I bake {dish}?",
            "How do I make {dish}?",
            "Give me a recipe for {dish}.",
            "How can I make {dish} at home?",
            "What's the secret to good {dish}?",
            "Any tips for making {dish}?",
            "Can you explain how to cook {dish}?",
            "How do you make {dish} from scratch?",
            "What's the easiest way to make {dish}?",
            "Teach me to make {dish}.",
        ],
        ["To make {dish}, {tip}.", "Here's a simple method: {tip}.", "Sure! {tip}.", "The key steps: {tip}."],
        _DISHES,
    ),
    _QA(
        "science",
        [
            "Explain how {thing} works.",
            "How does {thing} work?",
            "Can you explain {thing} in simple terms?",
            "What is {thing}?",
            "Explain {thing} to a ten year old.",
            "Why does {thing} happen?",
            "Give me a short explanation of {thing}.",
            "I'm curious how {thing} works.",
            "Describe {thing} briefly.",
            "What's the science behind {thing}?",
        ],
        ["In short, {fact}.", "Basically, {fact}.", "{thing} works like this: {fact}.", "Good question: {fact}."],
        _SCIENCE,
    ),
    _QA(
        "coding",
        [
            "How do I {task}?",
            "What's the best way to {task}?",
            "Can you show me how to {task}?",
            "Quick question: how to {task}?",
            "I need to {task}. How?",
            "What is the command to {task}?",
            "Help me {task}.",
        ],
        ["You can {how}.", "The simplest way is to {how}.", "Just {how}.", "Try this: {how}."],
        _CODING,
    ),
    _QA(
        "travel",
        [
            "What should I pack for a trip to {place}?",
            "Any tips for visiting {place}?",
            "What are the best things to do in {place}?",
            "Is {place} a good destination in spring?",
            "Plan a one week trip to {place} for me.",
            "What should I know before travelling to {place}?",
            "How expensive is a holiday in {place}?",
        ],
        ["For {place}, {tip}.", "My advice for {place}: {tip}.", "Have a great trip! {tip}."],
        _TRAVEL,
    ),
    _QA(
        "history",
        [
            "When did {event} happen?",
            "Tell me about {event}.",
            "Why was {event} important?",
            "What caused {event}?",
            "Give me a summary of {event}.",
            "Who was involved in {event}?",
        ],
        ["{event} {when}.", "Historians say {event} {when}.", "Briefly: {event} {when}, and it changed a lot."],
        _HISTORY,
    ),
    _QA(
        "howto",
        [
            "How do I {ask}?",
            "What's the best way to {ask}?",
            "Any tips on how to {ask}?",
            "Can you help me {ask}?",
            "I want to {ask}. Where do I start?",
            "Explain how to {ask}.",
        ],
        ["To {ask}, {how}.", "Here's what works: {how}.", "Sure. {how}."],
        _MISC,
    ),
    _QA(
        "writing",
        [
            "Write a short poem about {topic}.",
            "Write a haiku about {topic}.",
            "Give me a story idea about {topic}.",
            "Describe {topic} in three sentences.",
            "Write a limerick about {topic}.",
            "Suggest a title for an essay about {topic}.",
        ],
        [
            "Here's a short poem about {topic}.",
            "Sure! A few lines about {topic}, coming up.",
            "Here is something about {topic}.",
        ],
        _TOPICS,
    ),
    _QA(
        "language",
        [
            "How do I say '{phrase}' in {language}?",
            "Translate '{phrase}' into {language}.",
            "What is '{phrase}' in {language}?",
            "How do you pronounce '{phrase}' in {language}?",
            "Teach me to say '{phrase}' in {language}.",
        ],
        [
            "In {language}, '{phrase}' is said like this.",
            "Here's how to say '{phrase}' in {language}.",
            "Sure, '{phrase}' in {language} is easy.",
        ],
        _LANGUAGES,
    ),
    _QA(
        "math",
        [
            "What is {a} times {b}?",
            "What's {a} plus {b}?",
            "Calculate {a} divided by {b}.",
            "What is {a} minus {b}?",
            "Is {a} a prime number?",
            "What is {a} percent of {b}?",
            "Help me solve {a}x = {b}.",
        ],
        [
            "Let's work it out step by step with {a} and {b}.",
            "The answer follows from {a} and {b}.",
            "Here's the calculation.",
        ],
        _NUMBERS,
    ),
    _QA(
        "general",
        [
            "Why is the sky blue?",
            "How many planets are in the solar system?",
            "What is the boiling point of water?",
            "Who painted the Mona Lisa?",
            "How far is the moon from the Earth?",
            "What is the largest ocean?",
            "How many legs does a spider have?",
            "Who wrote Romeo and Juliet?",
            "What is the speed of light?",
            "Recommend a good book about space.",
            "Write a short poem about autumn.",
            "Tell me a joke about cats.",
            "What's a good name for a golden retriever?",
            "Help me write an email to my landlord about a broken heater.",
            "What are the symptoms of the flu?",
            "How much water should I drink a day?",
            "What is 17 times 23?",
            "Translate 'good morning' into Spanish.",
            "Summarize the plot of Romeo and Juliet.",
            "What is machine learning?",
            "Who won the football World Cup in 2018?",
            "How do airplanes stay in the air?",
            "What is the tallest mountain on Earth?",
            "Suggest a weekend workout plan.",
            "What's the difference between weather and climate?",
            "How do I improve my handwriting?",
            "When is the next leap year?",
            "What does a project manager do?",
            "Give me three ideas for a birthday party.",
            "How do bees make honey?",
            "What is the history of the Democratic party?",
            "How does the electoral college work?",
            "What is money laundering and why is it illegal?",
            "What are the warning signs of depression?",
            "How did the atomic bomb end World War II?",
            "Who invented the telephone?",
            "What is a prime number?",
            "How do I say thank you in Japanese?",
            "Write a haiku about the sea.",
            "What causes earthquakes?",
        ],
        [
            "Here's a short answer.",
            "Sure, happy to help with that.",
            "Good question! Here's what I know.",
            "Great question. In brief, it depends, but here is the usual explanation.",
            "Of course. Here you go.",
        ],
    ),
]
