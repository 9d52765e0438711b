"""The one return type of every loss and penalty: a differentiable total and named parts for logging."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ganbench.errors import GanbenchError


@dataclass
class LossTerms:
    """A differentiable scalar ``total`` and named scalar ``parts`` for logging (e.g. ``"d/real"``)."""

    total: Tensor
    parts: dict[str, Tensor]


def summed(parts: dict[str, Tensor]) -> LossTerms:
    """Total = sum of the parts (in insertion order); parts are stored detached."""
    total = sum(parts.values())
    return LossTerms(total, {k: v.detach() for k, v in parts.items()})


def check(ok: bool, message: str) -> None:
    """A bad constructor argument: one sentence through GanbenchError."""
    if not ok:
        raise GanbenchError(message)
