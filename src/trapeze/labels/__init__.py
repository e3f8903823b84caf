"""Security labels: partial orders with parametric families, and their text form."""

from trapeze.labels.lattice import (
    FAMILY_SUFFIX,
    LabelError,
    Lattice,
    NoJoinError,
    UnknownLabelError,
)

__all__ = ["FAMILY_SUFFIX", "Lattice", "LabelError", "NoJoinError", "UnknownLabelError"]
