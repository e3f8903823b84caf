"""Label orders built from a Hasse diagram with parametric families (DESIGN §3).

A label is a plain string in its canonical text form:

* a plain label: ``"public"``, ``"owner"``;
* a member of a parametric family: ``"client:alice"`` (family ``client``, parameter
  ``alice``). The diagram names the family as ``"client:*"``.

The diagram lists, for each label, the labels *directly above* it. Edges between families
carry the parameter (``client:X ⊑ client-cc:X``); an edge from a family to a plain label holds
for every member; an edge from a plain label to a family holds for every member.

The order is decided on the finite *abstract* graph whose nodes are plain labels and family
names. A search state is ``(node, parameter)`` where the parameter is ``None`` for plain
nodes, a concrete string after entering through a concrete member, or ``ANY`` after entering a
family from a plain label (every member is reachable). Results are memoised: the set of labels
an application uses is small, and ``flows`` sits on the store's hot path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

FAMILY_SUFFIX = ":*"
_ANY = object()  # parameter marker: "every member of this family"


class LabelError(ValueError):
    """A label or a label order is invalid. The message names the offending labels."""


class UnknownLabelError(LabelError):
    pass


class NoJoinError(LabelError):
    """Two labels have no least upper bound (or greatest lower bound) in this order."""


@dataclass(frozen=True)
class _Parsed:
    node: str  # plain label name or family name
    param: str | None  # None for plain labels


def _valid_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_." for c in name)


class Lattice:
    """A partial order of labels with a bottom and a top.

    Build one with :meth:`from_hasse` (the manifest form) or :meth:`chain` (a total order).
    """

    def __init__(self, above: Mapping[str, Sequence[str]], families: Iterable[str]) -> None:
        # `above` maps abstract nodes (plain names and family names) to the nodes directly
        # above them; validation has already happened in `from_hasse`.
        self._above = {k: tuple(v) for k, v in above.items()}
        self._families = frozenset(families)
        self._plain = frozenset(n for n in self._above if n not in self._families)
        self._bottom = self._find_extreme(minimal=True)
        self._top = self._find_extreme(minimal=False)
        self._add_caches()

    def _add_caches(self) -> None:
        self.flows = lru_cache(maxsize=65536)(self._flows)  # type: ignore[method-assign]
        self.join = lru_cache(maxsize=16384)(self._join)  # type: ignore[method-assign]
        self.meet = lru_cache(maxsize=16384)(self._meet)  # type: ignore[method-assign]
        self.parse = lru_cache(maxsize=65536)(self._parse)  # type: ignore[method-assign]

    # A lattice travels by pickle to the Ray executor's nodes with the manifest; the caches
    # (per-instance wrappers, which pickle cannot carry) are rebuilt empty on arrival.
    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        for name in ("flows", "join", "meet", "parse"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._add_caches()

    # ----------------------------------------------------------------- construction
    @classmethod
    def chain(cls, labels: Sequence[str]) -> Lattice:
        """A total order, lowest first."""
        if not labels:
            raise LabelError("a chain needs at least one label")
        diagram: dict[str, list[str]] = {a: [b] for a, b in pairwise(labels)}
        diagram.setdefault(labels[-1], [])
        return cls.from_hasse(diagram)

    @classmethod
    def from_hasse(cls, diagram: Mapping[str, Sequence[str]]) -> Lattice:
        """Validate a Hasse diagram and build its order.

        Rejects malformed names, cycles, and orders without a unique bottom and top; each error
        names the offending labels.
        """
        families: set[str] = set()
        above: dict[str, list[str]] = {}

        def node_of(text: str, where: str) -> str:
            if not isinstance(text, str):
                raise LabelError(f"{where}: label must be a string, got {text!r}")
            if text.endswith(FAMILY_SUFFIX):
                name = text[: -len(FAMILY_SUFFIX)]
                if not _valid_name(name):
                    raise LabelError(f"{where}: invalid family name {text!r}")
                families.add(name)
                return name
            if ":" in text:
                raise LabelError(
                    f"{where}: {text!r} names one member of a family; the diagram may only "
                    f"name whole families, written like 'client:*'"
                )
            if not _valid_name(text):
                raise LabelError(
                    f"{where}: invalid label name {text!r} (use letters, digits, '-', '_', '.')"
                )
            return text

        for lower, uppers in diagram.items():
            lo = node_of(lower, "labels")
            if isinstance(uppers, str) or not isinstance(uppers, Sequence):
                raise LabelError(f"labels: {lower!r} must list the labels above it, like [..]")
            ups = above.setdefault(lo, [])
            for upper in uppers:
                up = node_of(upper, f"labels.{lower}")
                above.setdefault(up, [])
                if up == lo:
                    raise LabelError(f"labels: {lower!r} is listed above itself")
                if up not in ups:
                    ups.append(up)
        plain_and_family = families & _plain_mentions(diagram)
        if plain_and_family:
            name = sorted(plain_and_family)[0]
            raise LabelError(f"labels: {name!r} is used both as a plain label and as a family")
        _check_acyclic(above, families)
        return cls(above, families)

    def _find_extreme(self, minimal: bool) -> str:
        below: dict[str, list[str]] = {n: [] for n in self._above}
        for lo, ups in self._above.items():
            for up in ups:
                below[up].append(lo)
        edges = below if minimal else self._above
        candidates = sorted(n for n in self._above if not edges[n])
        word = "bottom" if minimal else "top"
        fams = [c for c in candidates if c in self._families]
        if fams:
            raise LabelError(
                f"labels: family {fams[0] + FAMILY_SUFFIX!r} has nothing "
                f"{'below' if minimal else 'above'} it; every label needs a path "
                f"{'from the bottom' if minimal else 'to the top'}"
            )
        if len(candidates) != 1:
            raise LabelError(
                f"labels: the order needs exactly one {word}, found {len(candidates)}: "
                f"{', '.join(candidates) or 'none'}"
            )
        return candidates[0]

    # ----------------------------------------------------------------- text form
    def _parse(self, label: str) -> _Parsed:
        if not isinstance(label, str):
            raise UnknownLabelError(f"a label must be a string, got {type(label).__name__}")
        fam, sep, param = label.partition(":")
        if sep:
            if fam in self._families and param and param != "*" and _valid_param(param):
                return _Parsed(fam, param)
            if fam in self._families:
                raise UnknownLabelError(
                    f"invalid parameter in label {label!r:.80} (family {fam!r:.40} needs one "
                    f"parameter of at most {MAX_PARAM_LENGTH} letters, digits, '-', '_', '.', "
                    "'@')"
                )
            raise UnknownLabelError(f"unknown label family {fam!r:.40} in {label!r:.80}")
        if label in self._plain:
            return _Parsed(label, None)
        if label in self._families:
            raise UnknownLabelError(
                f"{label!r} is a family; name one member, like '{label}:NAME'"
            )
        raise UnknownLabelError(f"unknown label {label!r}")

    def check(self, label: str) -> str:
        """Return the canonical form of ``label`` or raise :class:`UnknownLabelError`."""
        self.parse(label)
        return label

    def is_label(self, label: object) -> bool:
        try:
            self.parse(label)  # type: ignore[arg-type]
        except UnknownLabelError:
            return False
        return True

    # ----------------------------------------------------------------- the order
    @property
    def bottom(self) -> str:
        return self._bottom

    @property
    def top(self) -> str:
        return self._top

    @property
    def plain_labels(self) -> frozenset[str]:
        return self._plain

    @property
    def families(self) -> frozenset[str]:
        return self._families

    def diagram(self) -> dict[str, list[str]]:
        """The Hasse diagram in manifest form (families written with ``:*``)."""

        def text(n: str) -> str:
            return n + FAMILY_SUFFIX if n in self._families else n

        return {text(lo): [text(u) for u in ups] for lo, ups in self._above.items()}

    def _flows(self, a: str, b: str) -> bool:
        pa, pb = self.parse(a), self.parse(b)
        if a == b:
            return True
        start = (pa.node, pa.param)
        seen = {start}
        stack = [start]
        while stack:
            node, param = stack.pop()
            if node == pb.node and (param == pb.param or (param is _ANY and pb.param)):
                return True
            for up in self._above[node]:
                if up in self._families:
                    nxt = (up, param if node in self._families else _ANY)
                else:
                    nxt = (up, None)
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    def leq(self, a: str, b: str) -> bool:
        return self.flows(a, b)

    def _candidates(self, *labels: str) -> list[str]:
        """Labels among which a least upper / greatest lower bound must lie (see module doc)."""
        params = sorted({p for p in (self.parse(x).param for x in labels) if p is not None})
        # Two fresh parameters stand for "every other member": family members with a parameter
        # outside the inputs are pairwise incomparable, so they can be bounds but never the
        # least or greatest one, and a plain candidate must be comparable with them to win.
        fresh = [f"fresh{i}" for i in range(len(params) + 2) if f"fresh{i}" not in params][:2]
        params += fresh
        out = sorted(self._plain)
        for fam in sorted(self._families):
            out.extend(f"{fam}:{p}" for p in params)
        return out

    def _join(self, a: str, b: str) -> str:
        if self.flows(a, b):
            return b
        if self.flows(b, a):
            return a
        uppers = [c for c in self._candidates(a, b) if self.flows(a, c) and self.flows(b, c)]
        least = [c for c in uppers if all(self.flows(c, d) for d in uppers)]
        if len(least) != 1:
            raise NoJoinError(
                f"labels {a!r} and {b!r} have no least upper bound "
                f"(upper bounds: {', '.join(uppers) or 'none'}); add a label above both"
            )
        return least[0]

    def _meet(self, a: str, b: str) -> str:
        if self.flows(a, b):
            return a
        if self.flows(b, a):
            return b
        lowers = [c for c in self._candidates(a, b) if self.flows(c, a) and self.flows(c, b)]
        greatest = [c for c in lowers if all(self.flows(d, c) for d in lowers)]
        if len(greatest) != 1:
            raise NoJoinError(f"labels {a!r} and {b!r} have no greatest lower bound")
        return greatest[0]

    def join_all(self, labels: Iterable[str]) -> str:
        out = self._bottom
        for lab in labels:
            out = self.join(out, lab)
        return out

    def sample_labels(self, params: Sequence[str] = ("a", "b")) -> list[str]:
        """Plain labels and family members with the given parameters (for checks and tests)."""
        out = sorted(self._plain)
        for fam in sorted(self._families):
            out.extend(f"{fam}:{p}" for p in params)
        return out

    def missing_joins(self) -> list[tuple[str, str]]:
        """Pairs of sample labels without a least upper bound (empty for a join-semilattice).

        Two members per family suffice: joins only ever compare parameters for equality.
        """
        labels = self.sample_labels()
        bad = []
        for i, a in enumerate(labels):
            for b in labels[i + 1 :]:
                try:
                    self.join(a, b)
                except NoJoinError:
                    bad.append((a, b))
        return bad


# As long as a principal id may be (store/system.py): a family member per principal fits, and a
# guest naming labels cannot make the store intern and compare unbounded strings.
MAX_PARAM_LENGTH = 256


def _valid_param(param: str) -> bool:
    return len(param) <= MAX_PARAM_LENGTH and all(c.isalnum() or c in "-_.@" for c in param)


def _plain_mentions(diagram: Mapping[str, Sequence[str]]) -> set[str]:
    names: set[str] = set()
    for lower, uppers in diagram.items():
        for text in [lower, *uppers]:
            if isinstance(text, str) and not text.endswith(FAMILY_SUFFIX):
                names.add(text)
    return names


def _check_acyclic(above: Mapping[str, Sequence[str]], families: set[str]) -> None:
    white, grey, black = 0, 1, 2
    colour = {n: white for n in above}

    def text(n: str) -> str:
        return n + FAMILY_SUFFIX if n in families else n

    for root in sorted(above):
        if colour[root] != white:
            continue
        path: list[str] = []
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                colour[node] = grey
                path.append(node)
            ups = above[node]
            if i < len(ups):
                stack.append((node, i + 1))
                nxt = ups[i]
                if colour[nxt] == grey:
                    cycle = path[path.index(nxt) :] + [nxt]
                    raise LabelError(
                        "labels: cycle " + " ⊑ ".join(text(n) for n in cycle)
                        + "; a label order cannot loop back on itself"
                    )
                if colour[nxt] == white:
                    stack.append((nxt, 0))
            else:
                colour[node] = black
                path.pop()
