"""Writes facts.jsonl: short biographies of made-up people with questions about them.

The demo QA model `make serve` publishes is trained on this file. It is synthetic on purpose
(SQuAD is not copied into the repository); run `python export/samples/qa/generate.py` to re-create it.
Each context describes one person, often next to a sentence about another place, organisation or
year, so the question has to be read to pick the right one of several candidates.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PEOPLE = ["Maria Garcia", "John Smith", "Yuki Tanaka", "Aisha Bello", "Carlos Mendes", "Li Wei", "Olga Petrova",
          "Ahmed Hassan", "Lucy Brown", "Tom Fischer", "Priya Sharma", "Jean Dupont", "Kofi Mensah", "Anna Kowalska",
          "Marco Rossi", "Sarah Cohen", "Ivan Novak", "Fatima Zahra", "Hans Berg", "Elena Costa"]
PLACES = ["Lisbon", "Nairobi", "Osaka", "Toronto", "Krakow", "Lyon", "Lagos", "Seville", "Hamburg", "Mumbai",
          "Porto", "Quebec", "Accra", "Turin", "Gdansk", "Valencia", "Kyoto", "Bergen", "Cairo", "Perth"]
ORGS = ["Siemens", "the Red Cross", "Toyota", "Barclays", "a small bakery", "the city library", "NASA", "Airbus",
        "a local newspaper", "the national railway", "UNICEF", "a hospital", "Nestle", "a bicycle shop"]
JOBS = ["an engineer", "a nurse", "a teacher", "a pilot", "a chef", "a journalist", "an architect", "a lawyer",
        "a pharmacist", "a carpenter", "a designer", "an accountant"]

QUESTIONS = {
    "place": ["Where was {p} born?", "In which city was {p} born?", "What is {p}'s home town?"],
    "year": ["When was {p} born?", "In what year was {p} born?"],
    "org": ["Who does {p} work for?", "Where does {p} work?", "Which employer does {p} have?"],
    "job": ["What does {p} do for a living?", "What is {p}'s job?"],
}


def person_facts(rng: random.Random, name: str) -> tuple[str, dict[str, str]]:
    facts = {"place": rng.choice(PLACES), "year": str(rng.randint(1940, 2004)), "org": rng.choice(ORGS),
             "job": rng.choice(JOBS)}
    first = rng.choice([
        "{p} was born in {place} in {year}.",
        "Born in {year} in {place}, {p} grew up by the sea.",
        "{p} comes from {place}, where {p} was born in {year}.",
    ])
    second = rng.choice([
        "Today {p} works for {org} as {job}.",
        "{p} is {job} and has worked for {org} since leaving school.",
        "After years abroad, {p} joined {org}, working as {job}.",
    ])
    return first.format(p=name, **facts) + " " + second.format(p=name, **facts), facts


DISTRACTORS = [
    "{place} is known for its old harbour.",
    "{org} was founded in {year}.",
    "The team from {place} won the cup in {year}.",
    "Many people in {place} work for {org}.",
]


def main() -> None:
    rng = random.Random(2026)
    rows = []
    for _ in range(450):
        name = rng.choice(PEOPLE)
        text, facts = person_facts(rng, name)
        context = text
        if rng.random() < 0.6:
            other = rng.choice(DISTRACTORS).format(place=rng.choice([p for p in PLACES if p != facts["place"]]),
                                                   org=rng.choice([o for o in ORGS if o != facts["org"]]),
                                                   year=str(rng.randint(1850, 1939)))
            other = other[0].upper() + other[1:]
            context = f"{other} {text}" if rng.random() < 0.5 else f"{text} {other}"
        kind = rng.choice(list(QUESTIONS))
        answer = facts[kind]
        # the answer as it appears in the person's own sentences
        start = context.index(answer, context.index(text))
        rows.append({"question": rng.choice(QUESTIONS[kind]).format(p=name), "context": context,
                     "answers": {"text": [answer], "answer_start": [start]}})
    out = Path(__file__).with_name("facts.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} questions to {out}")


if __name__ == "__main__":
    main()
