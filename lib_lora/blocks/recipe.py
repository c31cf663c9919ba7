"""Block-weight vectors with LBW's random and XY values: `R`, `U`, `X`, `X+f`, `X-f`, resolved with a seed.

LBW's meaning (shared/research/lbw.md §3): `R` = round(random(), 3), in [0, 1); `U` = round(uniform(-0.5, 1.5), 3)
(LBW's code; its README says -1.5…1.5); `X` = the X value (an `x` axis of the XY grid, else 1, as LBW's tag
without `x=`), `X+f` / `X-f` = X ± f. The values are drawn in the vector's order from `random.Random(seed)`, so a
seed and an X reproduce the numbers. Nothing downstream sees a letter: tags, the WebUI script and the infotext's
`Lora block weights` get the resolved numbers, and `Lora random weights` records the vector as written with its
seed and X (`recipe_field`). Parsing is linear in the text (its value count is checked first, as vectors.py does).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import BlockWeightError
from ..wording import echo
from .vectors import check_vector_length, parse_value

__all__ = ["DEFAULT_X", "RANDOM_FIELD", "WeightRecipe", "draw_seed", "is_recipe", "with_field"]

DEFAULT_X = 1.0
RANDOM_FIELD = "Lora random weights"
MAX_RANDOM_SEED = 2**32 - 1
_TOKEN = re.compile(r"R|U|X(?:[+-](?:\d+(?:\.\d*)?|\.\d+))?")

Weight = float | str
"""A number, or a token: "R", "U", "X", "X+0.5", "X-0.25"."""


def is_recipe(text: str) -> bool:
    """Whether the comma list `text` has a token (R, U, X…) among its values (no value is parsed)."""
    return any(_TOKEN.fullmatch(part.strip()) for part in text.split(","))


def draw_seed() -> int:
    """A new seed for R and U (recorded, so the numbers can be drawn again)."""
    return random.SystemRandom().randrange(MAX_RANDOM_SEED + 1)


def with_field(parameters: str, key: str, value: str) -> str:
    """An A1111 infotext with `Key: value` added at the end of its fields line (its last line)."""
    separator = ", " if parameters and not parameters.endswith("\n") else ""
    return f"{parameters}{separator}{key}: {value}"


@dataclass(frozen=True)
class WeightRecipe:
    """A vector as written: numbers and tokens, in order."""

    weights: tuple[Weight, ...]

    @classmethod
    def parse(cls, text: str, *, where: str = "block weights") -> WeightRecipe:
        """The comma list `text`; a value that is neither a number nor a token raises BlockWeightError naming it."""
        check_vector_length(text, where=where)
        weights: list[Weight] = []
        for index, part in enumerate(text.split(","), start=1):
            value = part.strip()
            if _TOKEN.fullmatch(value):
                weights.append(value)
                continue
            try:
                weights.append(parse_value(value, where=f"{where}, value {index}"))
            except BlockWeightError:
                if not value:
                    raise
                raise BlockWeightError(f"{where}, value {index}: {echo(value)} is not a number, R, U, X, X+f "
                                       "or X-f") from None
        return cls(tuple(weights))

    def __len__(self) -> int:
        return len(self.weights)

    @property
    def random(self) -> bool:
        """Whether R or U is drawn (the seed matters)."""
        return any(weight in ("R", "U") for weight in self.weights)

    @property
    def uses_x(self) -> bool:
        return any(isinstance(weight, str) and weight.startswith("X") for weight in self.weights)

    @property
    def plain(self) -> bool:
        """Numbers only."""
        return not any(isinstance(weight, str) for weight in self.weights)

    def text(self) -> str:
        return ",".join(weight if isinstance(weight, str) else f"{weight:g}" for weight in self.weights)

    def replaced(self, index: int, weight: Weight) -> WeightRecipe:
        return WeightRecipe(tuple(weight if i == index else w for i, w in enumerate(self.weights)))

    def only(self, index: int) -> WeightRecipe:
        """Every position but `index` at 0."""
        return WeightRecipe(tuple(w if i == index else 0.0 for i, w in enumerate(self.weights)))

    def resolve(self, *, seed: int = 0, x: float = DEFAULT_X) -> tuple[float, ...]:
        """The numbers: R and U drawn in order from `random.Random(seed)`, X tokens from `x`."""
        rng = random.Random(seed)
        return tuple(_resolved(weight, rng, x) for weight in self.weights)

    def record(self, *, seed: int, x: float = DEFAULT_X) -> str:
        """`Lora random weights`' value: the vector as written, with the seed (R/U) and X that resolve it."""
        parts = ([f"seed {seed}"] if self.random else []) + ([f"X {x:g}"] if self.uses_x else [])
        return f'"{self.text()}: {", ".join(parts)}"'


def _resolved(weight: Weight, rng: random.Random, x: float) -> float:
    if not isinstance(weight, str):
        return weight
    if weight == "R":
        return round(rng.random(), 3)
    if weight == "U":
        return round(rng.uniform(-0.5, 1.5), 3)
    return round(x + float(weight[1:] or 0.0), 6)


def recipe_text(values: Sequence[float]) -> str:
    """Numbers as the vector box writes them."""
    return ",".join(f"{float(value):g}" for value in values)
