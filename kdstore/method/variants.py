"""The six experiments of the paper, and the random-order control, as data: an ordering (see
orderings.ORDERINGS) and a lambda policy (kd_weight.POLICIES). docs/method.md has the table."""

from __future__ import annotations

from dataclasses import dataclass

from kdstore.method.kd_weight import POLICIES
from kdstore.method.orderings import ORDERINGS


@dataclass(frozen=True)
class Variant:
    name: str
    paper_name: str
    ordering: str  # one of ORDERINGS: how samples are visited each epoch
    policy: str  # key of kd_weight.POLICIES: how lambda is chosen per batch

    def __post_init__(self) -> None:
        if self.ordering not in ORDERINGS:
            raise ValueError(f"unknown ordering {self.ordering!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown lambda policy {self.policy!r}")

    @property
    def needs_teacher(self) -> bool:
        return self.policy != "zero"

    @property
    def fixed_lambda(self) -> bool:
        """Whether every batch has the same lambda (--lam), not a lambda of its own (SR)."""
        return self.policy == "fixed"


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("unguided", "Student-Unguided", "shuffle", "zero"),
        Variant("kd", "Student-KD", "shuffle", "fixed"),
        Variant("kd-cl", "Student-KD-CL", "curriculum", "fixed"),
        Variant("kd-icl", "Student-KD-CL'", "inverse", "fixed"),
        Variant("kd-cl-sr", "Student-KD-CL-SR", "curriculum", "sr"),
        Variant("kd-icl-sr", "Student-KD-CL'-SR", "inverse", "sr"),
        # control: a fixed, class-stratified random order (pacing applies as to kd-cl), fixed lambda
        Variant("random-cl", "control: random fixed order", "random", "fixed"),
    )
}
PAPER_VARIANTS = ("unguided", "kd", "kd-cl", "kd-icl", "kd-cl-sr", "kd-icl-sr")
ALIASES = {"kd-cl'": "kd-icl", "kd-cl'-sr": "kd-icl-sr"}


def get_variant(name: str) -> Variant:
    """Look a variant up by name or alias; unknown names fail with the list of known ones."""
    key = ALIASES.get(name, name)
    if key not in VARIANTS:
        known = ", ".join(list(VARIANTS) + list(ALIASES))
        raise ValueError(f"unknown variant {name!r}; known: {known}")
    return VARIANTS[key]
