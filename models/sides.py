"""Tower sides: the named roles an encoder plays, the delimiter tokens that mark each one, and the task
instruction a side may put before its texts.

cpt wraps every input as ``[SOS] x [EOS]``; giving each side (query / doc, text / code) its own
pair of delimiters lets one set of weights learn two roles. Later decoder embedders (E5-mistral,
Qwen3-Embedding) also prefix each query with a one-sentence task description
(``"Instruct: {task}\\nQuery: {text}"``), documents getting none: a side's ``instruction``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TEXT_FIELD = "{text}"
TASK_FIELD = "{task}"


@dataclass(frozen=True)
class Side:
    """One tower side.

    Args:
        name: the side's name (``text``, ``query``, ``doc``, ``code``).
        open_token: delimiter placed before the input.
        close_token: delimiter placed after the input; its last-layer hidden state is the embedding.
        instruction: a template ending in ``{text}`` (the input) and naming the task as ``{task}``,
            e.g. ``"Instruct: {task}\\nQuery: {text}"``; ``None``: the input alone. What comes before
            ``{text}`` is the side's prompt (a sentence-transformers prompt: a prefix).
        task: the ``{task}`` text used when none is given (the one trained with); a benchmark may name its own.
    """

    name: str
    open_token: str
    close_token: str
    instruction: str | None = None
    task: str | None = None

    def prompt(self, task: str | None = None) -> str:
        """The text put before every input of this side: the instruction with ``{task}`` filled ("" without one)."""
        if self.instruction is None:
            return ""
        prefix = self.instruction[: -len(TEXT_FIELD)]
        if TASK_FIELD not in prefix:
            return prefix
        task = task if task is not None else self.task
        if task is None:
            raise ValueError(f"side {self.name!r}: its instruction names {{task}} but no task text was given")
        return prefix.replace(TASK_FIELD, task)

    def to_dict(self) -> dict[str, str]:
        """The config form, as :func:`parse_sides` reads it (the name is the mapping key)."""
        out = {"open_token": self.open_token, "close_token": self.close_token}
        if self.instruction is not None:
            out.update(instruction=self.instruction, **({"task": self.task} if self.task is not None else {}))
        return out


def check_instruction(side: str, instruction: Any) -> None:
    """A side's instruction: a string ending in ``{text}`` (its only ``{text}``), naming ``{task}`` at most once."""
    if not isinstance(instruction, str) or not instruction.endswith(TEXT_FIELD) or instruction.count(TEXT_FIELD) != 1:
        raise ValueError(
            f"side {side!r}: instruction must be a string ending in {TEXT_FIELD} (the input goes last, so the "
            "instruction is a prefix, as sentence-transformers prompts are), e.g. "
            f'"Instruct: {{task}}\\nQuery: {{text}}"; got {instruction!r}'
        )
    if instruction.count(TASK_FIELD) > 1:
        raise ValueError(f"side {side!r}: instruction names {TASK_FIELD} more than once: {instruction!r}")


def parse_sides(
    sides: Mapping[str, Mapping[str, str]],
    instructions: Mapping[str, str | None] | None = None,
    task: str | None = None,
) -> dict[str, Side]:
    """Validate a ``{side_name: {open_token: ..., close_token: ...}}`` mapping from a config.

    Args:
        sides: the tower's sides (a saved checkpoint's may also carry ``instruction`` and ``task``).
        instructions: side name -> instruction template (``tower.instructions``); sides not named get none.
        task: the ``{task}`` text the instructions use (``tower.task``).

    Raises:
        ValueError: naming the side and the missing, repeated or malformed field.
    """
    if not sides:
        raise ValueError("a tower needs at least one side, e.g. {text: {open_token: ..., close_token: ...}}")
    unknown_sides = sorted(set(instructions or {}) - set(sides))
    if unknown_sides:
        raise ValueError(f"tower.instructions names sides {unknown_sides} the tower does not have ({list(sides)})")
    parsed: dict[str, Side] = {}
    seen_tokens: set[str] = set()
    for name, spec in sides.items():
        unknown = set(spec) - {"open_token", "close_token", "instruction", "task"}
        if unknown:
            raise ValueError(f"side {name!r}: unknown field(s) {sorted(unknown)}; expected open_token, close_token")
        for field in ("open_token", "close_token"):
            token = spec.get(field)
            if not isinstance(token, str) or not token:
                raise ValueError(f"side {name!r}: {field} must be a non-empty string")
            if token in seen_tokens:
                raise ValueError(f"side {name!r}: delimiter {token!r} is already used by another side")
            seen_tokens.add(token)
        instruction = (instructions or {}).get(name, spec.get("instruction"))
        side_task = spec.get("task", task) if instruction is not None else None
        if instruction is not None:
            check_instruction(name, instruction)
        parsed[name] = Side(name, spec["open_token"], spec["close_token"], instruction, side_task)
    return parsed
