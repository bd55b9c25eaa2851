"""Train/valid/test assignment by group (repository, package or document): no group in two splits.

CodeSearchNet split by repository so that no project's code is seen in training and test; here a
group is whatever the source names (a Debian package's top-level directory, an npm package's
folder, a site-packages distribution, a document). Groups are visited roughly largest first (each
size is scaled by a seeded factor in [0.5, 1.5), so the seed changes which of similar-sized groups
go where) and each goes to the split with the most room left (target item count minus items
already there). Large groups thus land where they fit, usually train, and small groups fill the
remaining room, which keeps every split close to its target share even when a few groups hold
thousands of items.
"""

from __future__ import annotations

from collections.abc import Mapping

from pairdata.textnorm import stable_hash

DEFAULT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}


def validate_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Check that the split fractions are non-negative and sum to 1."""
    if not fractions or any(value < 0 for value in fractions.values()):
        raise ValueError(f"split fractions must be non-negative, got {dict(fractions)}")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {dict(fractions)} (sum {total})")
    return dict(fractions)


def assign_splits(
    group_sizes: Mapping[str, int], fractions: Mapping[str, float] = DEFAULT_FRACTIONS, seed: str = "pairdata"
) -> dict[str, str]:
    """Map each group to a split name.

    Args:
        group_sizes: items per group.
        fractions: target share of items per split (e.g. ``{"train": .8, "valid": .1, "test": .1}``).
        seed: changes the visiting order, hence which groups land where.

    Returns:
        ``{group: split}`` covering every group.
    """
    fractions = validate_fractions(fractions)
    total = sum(group_sizes.values())
    targets = {split: share * total for split, share in fractions.items()}
    filled = dict.fromkeys(fractions, 0)
    assignment: dict[str, str] = {}

    def weight(group: str) -> float:
        jitter = stable_hash(f"{seed}\x1f{group}") / 2**64  # in [0, 1), the same in every process
        return group_sizes[group] * (0.5 + jitter)

    order = sorted(group_sizes, key=lambda group: (-weight(group), group))
    splits = [split for split in fractions if fractions[split] > 0]
    for group in order:
        # the split with the most room left in items (ties: the listed order)
        split = max(splits, key=lambda split: targets[split] - filled[split])
        assignment[group] = split
        filled[split] += group_sizes[group]
    return assignment
