"""The shipped fine-tuning example: short order sentences turned into one fixed JSON object.

    maas finetune-data orders OUT_DIR [--seed 0]     # writes train / validation / heldout JSONL

Every example is drawn from a seeded generator: a customer (first and last name), one to three
items with quantities, a delivery date, phrased by one of several sentence templates. The
answer is the order as compact JSON with the keys in a fixed order. The held-out customers are
full names that never occur in the training or validation files (their first and last names
do, in other pairs), and their item lists are new combinations, so a model that passes the
held-out split has learnt the format, not the rows. SmolLM2-135M-Instruct scores 0 of 40 on it
before tuning (its answers are prose, or JSON of its own shape).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from maas.finetune.examples import ChatExample, Message, write_jsonl

SYSTEM = "Order to JSON: customer, items (name, quantity), delivery_date (YYYY-MM-DD)."
FIRST = ("Ava", "Liam", "Priya", "Noah", "Mei", "Omar", "Sofia", "Lucas", "Amara", "Jonas",
         "Elena", "Kenji", "Zara", "Mateo", "Ingrid", "Tariq", "Chloe", "Ravi", "Nadia", "Felix")
LAST = ("Patel", "Okafor", "Schmidt", "Garcia", "Tanaka", "Novak", "Dubois", "Silva",
        "Kowalski", "Haddad", "Larsen", "Moreau", "Rossi", "Nguyen", "Fischer", "Costa")
# Item names as the JSON gives them, and their plurals as a sentence says them.
PLURALS = {"blue mug": "blue mugs", "notebook": "notebooks", "desk lamp": "desk lamps",
           "water bottle": "water bottles", "phone charger": "phone chargers",
           "backpack": "backpacks", "coffee grinder": "coffee grinders",
           "wool scarf": "wool scarves", "yoga mat": "yoga mats",
           "pair of headphones": "pairs of headphones", "tea kettle": "tea kettles",
           "picture frame": "picture frames", "umbrella": "umbrellas", "candle": "candles",
           "cutting board": "cutting boards", "plant pot": "plant pots"}
ITEMS = tuple(PLURALS)
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
TEMPLATES = (
    "{name} would like {items}, delivered on {date}.",
    "Please send {items} to {name} by {date}.",
    "Order for {name}: {items}. Delivery date: {date}.",
    "{name} ordered {items}; deliver them on {date}.",
    "Can you get {items} to {name} on {date}?",
    "New order from {name} for {items}, to arrive {date}.",
)
FIRST_DAY = date(2027, 1, 1)


@dataclass(frozen=True)
class Order:
    customer: str
    items: tuple[tuple[str, int], ...]  # (name, quantity), in the sentence's order
    delivery: date
    template: int
    long_date: bool  # "14 March 2027" or "March 14, 2027"

    def sentence(self) -> str:
        parts = [f"{quantity} {name if quantity == 1 else PLURALS[name]}"
                 for name, quantity in self.items]
        items = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        month = MONTHS[self.delivery.month - 1]
        when = (f"{self.delivery.day} {month} {self.delivery.year}" if self.long_date
                else f"{month} {self.delivery.day}, {self.delivery.year}")
        return TEMPLATES[self.template].format(name=self.customer, items=items, date=when)

    def answer(self) -> str:
        return json.dumps({"customer": self.customer,
                           "items": [{"name": n, "quantity": q} for n, q in self.items],
                           "delivery_date": self.delivery.isoformat()})

    def example(self) -> ChatExample:
        return ChatExample(messages=[Message(role="system", content=SYSTEM),
                                     Message(role="user", content=self.sentence()),
                                     Message(role="assistant", content=self.answer())])


@dataclass(frozen=True)
class OrderSplits:
    train: list[ChatExample]
    validation: list[ChatExample]
    heldout: list[ChatExample]

    def write(self, folder: Path) -> dict[str, Path]:
        """``train.jsonl``, ``validation.jsonl`` and ``heldout.jsonl`` in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        return {name: write_jsonl(folder / f"{name}.jsonl", rows)
                for name, rows in (("train", self.train), ("validation", self.validation),
                                   ("heldout", self.heldout))}


def _order(rng: random.Random, customer: str) -> Order:
    count = rng.choice((1, 1, 2, 2, 3))
    items = tuple((name, rng.randint(1, 9)) for name in rng.sample(ITEMS, count))
    return Order(customer=customer, items=items,
                 delivery=FIRST_DAY + timedelta(days=rng.randrange(730)),
                 template=rng.randrange(len(TEMPLATES)), long_date=rng.random() < 0.5)


def generate(seed: int = 0, train: int = 400, validation: int = 40,
             heldout: int = 40) -> OrderSplits:
    """The three splits; the same seed gives the same files."""
    rng = random.Random(seed)
    names = [f"{first} {last}" for first in FIRST for last in LAST]
    rng.shuffle(names)
    # A fifth of the full names are kept for the held-out split only.
    unseen, seen = names[:len(names) // 5], names[len(names) // 5:]
    train_orders = [_order(rng, rng.choice(seen)) for _ in range(train + validation)]
    item_sets = {frozenset(n for n, _ in o.items) for o in train_orders}
    held: list[Order] = []
    while len(held) < heldout:
        order = _order(rng, rng.choice(unseen))
        if len(order.items) == 1 or frozenset(n for n, _ in order.items) not in item_sets:
            held.append(order)
    examples = [o.example() for o in train_orders]
    return OrderSplits(train=examples[:train], validation=examples[train:],
                       heldout=[o.example() for o in held])
