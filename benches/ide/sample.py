"""A small inventory module: the checked-in sample that `tandem bench ide` types through."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional


@dataclass
class Item:
    """One stocked item."""

    sku: str
    name: str
    price: float
    quantity: int = 0
    tags: List[str] = field(default_factory=list)

    def total_value(self) -> float:
        return self.price * self.quantity

    def to_dict(self) -> Dict[str, object]:
        return {
            "sku": self.sku,
            "name": self.name,
            "price": self.price,
            "quantity": self.quantity,
            "tags": list(self.tags),
        }


class Inventory:
    """Items by SKU, with a log of every change."""

    def __init__(self) -> None:
        self.items: Dict[str, Item] = {}
        self.log: List[str] = []

    def add(self, item: Item) -> None:
        if item.sku in self.items:
            raise ValueError(f"duplicate sku {item.sku}")
        self.items[item.sku] = item
        self.log.append(f"add {item.sku}")

    def remove(self, sku: str) -> Item:
        item = self.items.pop(sku)
        self.log.append(f"remove {sku}")
        return item

    def restock(self, sku: str, amount: int) -> int:
        if amount <= 0:
            raise ValueError("amount must be positive")
        item = self.items[sku]
        item.quantity += amount
        self.log.append(f"restock {sku} {amount}")
        return item.quantity

    def sell(self, sku: str, amount: int) -> float:
        item = self.items[sku]
        if item.quantity < amount:
            raise ValueError(f"only {item.quantity} of {sku} left")
        item.quantity -= amount
        self.log.append(f"sell {sku} {amount}")
        return item.price * amount

    def find(self, tag: str) -> List[Item]:
        return [item for item in self.items.values() if tag in item.tags]

    def cheapest(self) -> Optional[Item]:
        if not self.items:
            return None
        return min(self.items.values(), key=lambda item: item.price)

    def total_value(self) -> float:
        return sum(item.total_value() for item in self.items.values())

    def low_stock(self, threshold: int = 5) -> List[str]:
        return sorted(sku for sku, item in self.items.items() if item.quantity < threshold)

    def save(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump([item.to_dict() for item in self.items.values()], f, indent=2)

    @classmethod
    def load(cls, path: str) -> "Inventory":
        inventory = cls()
        with open(path, encoding="utf-8") as f:
            for row in json.load(f):
                inventory.add(Item(**row))
        return inventory


def merge(inventories: Iterable[Inventory]) -> Inventory:
    merged = Inventory()
    for inventory in inventories:
        for sku, item in inventory.items.items():
            if sku in merged.items:
                merged.restock(sku, item.quantity)
            else:
                merged.add(Item(item.sku, item.name, item.price, item.quantity, list(item.tags)))
    return merged


def report(inventory: Inventory) -> str:
    lines = [f"{len(inventory.items)} items, worth {inventory.total_value():.2f}"]
    for sku in inventory.low_stock():
        item = inventory.items[sku]
        lines.append(f"  low: {item.name} ({item.quantity} left)")
    return "\n".join(lines)
