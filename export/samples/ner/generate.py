"""Writes news.jsonl: templated news-style sentences with character-span entities (PER, ORG, LOC, MISC).

The demo NER model `make serve` publishes is trained on this file. It is synthetic on purpose
(CoNLL-2003 may not be redistributed); run `python export/samples/ner/generate.py` to re-create it.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

PER = ["Angela Merkel", "Emmanuel Macron", "Maria Garcia", "John Smith", "Yuki Tanaka", "Peter Blackburn",
       "Aisha Bello", "Carlos Mendes", "Li Wei", "Sarah O'Connor", "David Cohen", "Olga Petrova", "Ahmed Hassan",
       "Lucy Brown", "Tom Fischer", "Priya Sharma", "Jean Dupont", "Kofi Mensah", "Anna Kowalska", "Marco Rossi"]
ORG = ["Reuters", "the European Union", "Siemens", "the United Nations", "Toyota", "Barclays", "Google",
       "the World Bank", "Manchester United", "NASA", "Airbus", "the Red Cross", "Nestle", "Interpol",
       "the Bundesbank", "Samsung", "UNICEF", "Volkswagen", "the IMF", "Real Madrid"]
LOC = ["Paris", "Berlin", "Tokyo", "New York", "Brussels", "Lagos", "Sao Paulo", "Beijing", "London", "Madrid",
       "Cairo", "Mumbai", "Warsaw", "Rome", "Nairobi", "Sydney", "Moscow", "Geneva", "Lisbon", "Toronto"]
MISC = ["German", "French", "Japanese", "Olympic", "Brazilian", "Christmas", "English", "Nobel", "Islamic",
        "Chinese", "World Cup", "Euro", "Nigerian", "Polish", "Italian"]

TEMPLATES = [
    "{PER} met {PER} in {LOC} on Monday.",
    "{ORG} said on Tuesday it would cut 2,000 jobs in {LOC}.",
    "{PER}, a spokesman for {ORG}, declined to comment.",
    "Shares of {ORG} rose 3 percent in {LOC} trading.",
    "The {MISC} government welcomed the decision, {PER} told reporters.",
    "{PER} scored twice as {ORG} beat {ORG} 3-1.",
    "Police in {LOC} arrested two men on Friday, {ORG} reported.",
    "{PER} will visit {LOC} next week to meet {MISC} officials.",
    "{ORG} and {ORG} signed a deal in {LOC}.",
    "The {MISC} champion {PER} withdrew from the tournament in {LOC}.",
    "Flights between {LOC} and {LOC} were cancelled because of the storm.",
    "{PER} won the {MISC} prize for her work on climate models.",
    "Talks between {ORG} and the {MISC} delegation resumed in {LOC}.",
    "Prices fell sharply on the {MISC} market after {ORG} warned of losses.",
    "{PER} left {ORG} after ten years to join {ORG}.",
    "Thousands marched through {LOC} on Sunday.",
    "The meeting ended without agreement, officials said.",
    "Oil prices were steady in early trade.",
    "{PER} said the {MISC} economy would grow by 2 percent.",
    "{ORG} opened a research centre in {LOC} employing 300 people.",
]


def render(template: str, rng: random.Random) -> dict:
    text, entities = "", []
    for piece in re.split(r"(\{[A-Z]+\})", template):
        if piece.startswith("{"):
            label = piece[1:-1]
            value = rng.choice({"PER": PER, "ORG": ORG, "LOC": LOC, "MISC": MISC}[label])
            start = len(text) + (4 if value.startswith("the ") else 0)  # "the" is not part of the name
            text += value
            entities.append({"start": start, "end": len(text), "label": label})
        else:
            text += piece
    if text[0].islower():
        text = text[0].upper() + text[1:]
    return {"text": text, "entities": entities}


def main() -> None:
    rng = random.Random(2026)
    rows = [render(rng.choice(TEMPLATES), rng) for _ in range(600)]
    out = Path(__file__).with_name("news.jsonl")
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} sentences to {out}")


if __name__ == "__main__":
    main()
