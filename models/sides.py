"""Tower sides: the named roles an encoder plays and the delimiter tokens that mark each one.

cpt wraps every input as ``[SOS] x [EOS]``; giving each side (query / doc, text / code) its own
pair of delimiters lets one set of weights learn two roles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Side:
    """One tower side.

    Args:
        name: the side's name (``text``, ``query``, ``doc``, ``code``).
        open_token: delimiter placed before the input.
        close_token: delimiter placed after the input; its last-layer hidden state is the embedding.
    """

    name: str
    open_token: str
    close_token: str

    def to_dict(self) -> dict[str, str]:
        """The config form, as :func:`parse_sides` reads it (the name is the mapping key)."""
        return {"open_token": self.open_token, "close_token": self.close_token}


def parse_sides(sides: Mapping[str, Mapping[str, str]]) -> dict[str, Side]:
    """Validate a ``{side_name: {open_token: ..., close_token: ...}}`` mapping from a config.

    Raises:
        ValueError: naming the side and the missing or repeated field.
    """
    if not sides:
        raise ValueError("a tower needs at least one side, e.g. {text: {open_token: ..., close_token: ...}}")
    parsed: dict[str, Side] = {}
    seen_tokens: set[str] = set()
    for name, spec in sides.items():
        unknown = set(spec) - {"open_token", "close_token"}
        if unknown:
            raise ValueError(f"side {name!r}: unknown field(s) {sorted(unknown)}; expected open_token, close_token")
        for field in ("open_token", "close_token"):
            token = spec.get(field)
            if not isinstance(token, str) or not token:
                raise ValueError(f"side {name!r}: {field} must be a non-empty string")
            if token in seen_tokens:
                raise ValueError(f"side {name!r}: delimiter {token!r} is already used by another side")
            seen_tokens.add(token)
        parsed[name] = Side(name=name, open_token=spec["open_token"], close_token=spec["close_token"])
    return parsed
