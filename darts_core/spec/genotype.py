"""Genotypes: the discrete architecture a DARTS search finds.

A genotype describes the two cell types of a DARTS network (normal and reduction). Each cell has two
inputs (states 0 and 1: the outputs of the two previous cells) and ``num_nodes`` internal nodes; node
``i`` sums two operations applied to earlier states and its output is state ``i + 2``. The cell output
concatenates the states listed in ``*_concat`` along the channel axis.

Three interchangeable forms are supported:

* the Python object :class:`Genotype` (immutable, hashable),
* JSON (:meth:`Genotype.to_json` / :meth:`Genotype.from_json`), the format of the REST API::

      {"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5],
       "reduce": [...], "reduce_concat": [2, 3, 4, 5]}

* the string form printed by the DARTS reference code (:meth:`Genotype.to_darts` /
  :meth:`Genotype.from_darts`), so genotypes move between this project and other DARTS code::

      Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...], normal_concat=range(2, 6),
               reduce=[...], reduce_concat=range(2, 6))

This module imports no torch; deriving a genotype from a search's weights is
:func:`darts_core.search.derive.derive_genotype`.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import InitVar, dataclass
from typing import Any, cast

from darts_core.spec.op_names import DARTS_OP_NAMES, MAX_INTERNAL_NODES

__all__ = ["DARTS_OP_NAMES", "DARTS_V2", "Gene", "Genotype", "keepable_operations", "num_edges"]

#: One chosen edge of a cell: ``(op_name, input_index)``.
Gene = tuple[str, int]

_NONE = "none"
_CELL_KINDS = ("normal", "reduce")
_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
_MAX_DARTS_TEXT = 100_000  # far above any real genotype; bounds the parser's work on hostile input


def num_edges(internal_nodes: int) -> int:
    """Number of mixed edges of a DARTS cell: node ``i`` has ``i + 2`` incoming edges (14 for 4 nodes)."""
    return internal_nodes * (internal_nodes + 3) // 2


def keepable_operations(primitives: Sequence[str]) -> list[int]:
    """The indices of the operations a genotype can keep on an edge: every one of ``primitives`` but
    ``none`` (a gene ``("none", j)`` drops its input rather than keeping an operation).

    Raises:
        ValueError: naming ``primitives`` when none is left.
    """
    keepable = [k for k, name in enumerate(primitives) if name != _NONE]
    if not keepable:
        raise ValueError(
            f"primitives: needs at least one operation other than 'none', got {list(primitives)}"
        )
    return keepable


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _normalise_genes(kind: str, genes: Any) -> tuple[Gene, ...]:
    if isinstance(genes, (str, bytes)) or not isinstance(genes, Iterable):
        raise ValueError(f"{kind}: expected a sequence of (op_name, input_index) pairs, got {genes!r}")
    normalised = []
    for position, gene in enumerate(genes):
        if isinstance(gene, (str, bytes)) or not isinstance(gene, Sequence) or len(gene) != 2:
            raise ValueError(f"{kind}[{position}]: expected an (op_name, input_index) pair, got {gene!r}")
        op_name, input_index = gene
        if not isinstance(op_name, str) or not op_name:
            raise ValueError(f"{kind}[{position}]: op name must be a non-empty string, got {op_name!r}")
        if not _is_int(input_index):
            raise ValueError(f"{kind}[{position}]: input index must be an integer, got {input_index!r}")
        normalised.append((op_name, int(input_index)))
    return tuple(normalised)


def _normalise_concat(name: str, concat: Any) -> tuple[int, ...]:
    if isinstance(concat, (str, bytes)) or not isinstance(concat, Iterable):
        raise ValueError(f"{name}: expected a sequence of state indices, got {concat!r}")
    values = tuple(concat)
    for position, value in enumerate(values):
        if not _is_int(value):
            raise ValueError(f"{name}[{position}]: state index must be an integer, got {value!r}")
    return values


@dataclass(frozen=True, repr=False, kw_only=True)
class Genotype:
    """The discrete architecture of a DARTS network: one normal cell and one reduction cell.

    Args:
        normal: ``(op_name, input_index)`` pairs of the normal cell, two per internal node, node by node.
            Input 0 and 1 are the cell's two inputs; node ``i`` may read states ``0 .. i + 1``.
        normal_concat: states concatenated for the normal cell's output
            (default ``range(2, 2 + num_nodes)``: every internal node).
        reduce: the same for the reduction cell.
        reduce_concat: the same for the reduction cell.
        primitives: op names allowed in this genotype (construction-only, not stored). ``None`` means
            the eight DARTS names :data:`DARTS_OP_NAMES`. ``none`` is never a chosen op; a gene
            ``("none", j)`` is a dropped input, allowed whatever ``primitives`` says: a node that keeps
            fewer than two inputs (FairDARTS's threshold derivation) lists the input it drops so. The
            DARTS reference's ``OPS["none"]`` is its ``Zero`` op, so such a genotype still builds in
            DARTS code; :class:`~darts_core.nn.genotype_network.GenotypeNetwork` builds a zero there (no
            parameters, no multiply-adds), and a node without a kept input outputs zeros.

    Arguments are keyword-only. Lists (and ranges) are converted to tuples and ``*_concat`` is always a
    tuple after construction, so a genotype is immutable and hashable. Any invalid content raises a
    ``ValueError`` that names the offending entry, e.g.
    ``"normal[3]: input index 5 out of range for node 1 (0..2)"``.

    Within a node, :func:`derive_genotype` lists the stronger edge first, as the DARTS reference does;
    equality therefore compares the order too.
    """

    normal: tuple[Gene, ...]
    normal_concat: tuple[int, ...] | None = None
    reduce: tuple[Gene, ...]
    reduce_concat: tuple[int, ...] | None = None
    primitives: InitVar[Sequence[str] | None] = None

    def __post_init__(self, primitives: Sequence[str] | None) -> None:
        normal = _normalise_genes("normal", self.normal)
        reduce = _normalise_genes("reduce", self.reduce)
        object.__setattr__(self, "normal", normal)
        object.__setattr__(self, "reduce", reduce)
        for kind, genes in (("normal", normal), ("reduce", reduce)):
            if len(genes) % 2:
                raise ValueError(
                    f"{kind}: {len(genes)} entries; expected an even number (two per internal node)"
                )
        default_concat = tuple(range(2, 2 + len(normal) // 2))
        for name in ("normal_concat", "reduce_concat"):
            value = getattr(self, name)
            object.__setattr__(
                self, name, default_concat if value is None else _normalise_concat(name, value)
            )
        self.validate(primitives)

    # ------------------------------------------------------------------ structure

    @property
    def num_nodes(self) -> int:
        """Number of internal nodes per cell (the same for the normal and the reduction cell)."""
        return len(self.normal) // 2

    def validate(self, primitives: Sequence[str] | None = None) -> Genotype:
        """Check the genotype against a list of allowed op names and return it.

        Args:
            primitives: allowed op names; ``None`` means :data:`DARTS_OP_NAMES`.

        Raises:
            ValueError: naming the first invalid entry (unknown op, input index out of
                range for its node, odd or mismatched entry counts, more than :data:`MAX_INTERNAL_NODES`
                nodes, concat index out of range or repeated).
        """
        allowed = set(DARTS_OP_NAMES if primitives is None else primitives)
        for kind in _CELL_KINDS:
            genes = getattr(self, kind)
            if len(genes) > 2 * MAX_INTERNAL_NODES:
                raise ValueError(
                    f"{kind}: {len(genes)} entries ({len(genes) // 2} internal nodes); a cell has at most "
                    f"{MAX_INTERNAL_NODES} internal nodes ({2 * MAX_INTERNAL_NODES} entries)"
                )
            if len(genes) % 2:
                raise ValueError(
                    f"{kind}: {len(genes)} entries; expected an even number (two per internal node)"
                )
            if not genes:
                raise ValueError(f"{kind}: no entries; a cell needs at least one internal node")
            for position, (op_name, input_index) in enumerate(genes):
                node = position // 2
                if op_name not in allowed and op_name != _NONE:  # ("none", j): a dropped input
                    raise ValueError(
                        f"{kind}[{position}]: unknown operation {op_name!r}; "
                        f"expected one of {sorted(allowed)}"
                    )
                if not 0 <= input_index <= node + 1:
                    raise ValueError(
                        f"{kind}[{position}]: input index {input_index} out of range for node {node} "
                        f"(0..{node + 1})"
                    )
        if len(self.reduce) != len(self.normal):
            raise ValueError(
                f"reduce: {len(self.reduce)} entries ({len(self.reduce) // 2} nodes) but normal has "
                f"{len(self.normal)} ({len(self.normal) // 2} nodes); both cells need the same node count"
            )
        last_state = self.num_nodes + 1
        for kind in _CELL_KINDS:
            name = f"{kind}_concat"
            concat = getattr(self, name)
            if not concat:
                raise ValueError(f"{name}: empty; the cell output needs at least one state")
            seen: set[int] = set()
            for position, state in enumerate(concat):
                if not 0 <= state <= last_state:
                    raise ValueError(
                        f"{name}[{position}]: state index {state} out of range (0..{last_state})"
                    )
                if state in seen:
                    raise ValueError(f"{name}[{position}]: state index {state} appears twice")
                seen.add(state)
        return self

    # ------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, list]:
        """The JSON-ready form: ``{"normal": [[op, index], ...], "normal_concat": [...], ...}``."""
        # __post_init__ fills both concats, so they are never None on a constructed Genotype.
        assert self.normal_concat is not None and self.reduce_concat is not None
        return {
            "normal": [[op_name, index] for op_name, index in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op_name, index] for op_name, index in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_json(
        cls, data: Mapping[str, Any] | str | bytes, primitives: Sequence[str] | None = None
    ) -> Genotype:
        """Build a genotype from :meth:`to_json`'s dict, or a JSON string of it.

        ``*_concat`` may be omitted (default: every internal node). Unknown keys are rejected.
        """
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as error:
                raise ValueError(f"data: not valid JSON ({error})") from error
        if not isinstance(data, Mapping):
            raise ValueError(f"data: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ValueError(f"data: unknown genotype keys {unknown}; expected {list(_FIELDS)}")
        missing = [kind for kind in _CELL_KINDS if kind not in data]
        if missing:
            raise ValueError(f"data: missing genotype keys {missing}")
        return cls(
            normal=data["normal"],
            normal_concat=data.get("normal_concat"),
            reduce=data["reduce"],
            reduce_concat=data.get("reduce_concat"),
            primitives=primitives,
        )

    # ------------------------------------------------------------------ DARTS string form

    def to_darts(self) -> str:
        """The DARTS reference code's string form (flat lists; ``range(a, b)`` for a contiguous concat)."""

        def genes(values: tuple[Gene, ...]) -> str:
            return "[" + ", ".join(f"({op_name!r}, {index})" for op_name, index in values) + "]"

        def concat(values: tuple[int, ...]) -> str:
            if values == tuple(range(values[0], values[-1] + 1)):
                return f"range({values[0]}, {values[-1] + 1})"
            return "[" + ", ".join(str(value) for value in values) + "]"

        # __post_init__ fills both concats, so they are never None on a constructed Genotype.
        assert self.normal_concat is not None and self.reduce_concat is not None
        return (
            f"Genotype(normal={genes(self.normal)}, normal_concat={concat(self.normal_concat)}, "
            f"reduce={genes(self.reduce)}, reduce_concat={concat(self.reduce_concat)})"
        )

    @classmethod
    def from_darts(cls, text: str, primitives: Sequence[str] | None = None) -> Genotype:
        """Parse the DARTS reference code's string form, without evaluating it.

        Accepts ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), reduce=[...],
        reduce_concat=range(2, 6))``, optionally prefixed by an assignment (``DARTS_V2 = Genotype(...)``)
        or a module path (``genotypes.Genotype(...)``); the nested per-node variant
        (``normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], ...]``); concat as ``range(a, b)`` or a
        literal list/tuple; fields as keywords or positionally in the order normal, normal_concat,
        reduce, reduce_concat. Only literals are read (via :mod:`ast`); nothing is executed.
        """
        if not isinstance(text, str):
            raise ValueError(f"text: expected a string, got {type(text).__name__}")
        if len(text) > _MAX_DARTS_TEXT:
            raise ValueError(
                f"text: {len(text)} characters is too long for a genotype (max {_MAX_DARTS_TEXT})"
            )
        try:
            module = ast.parse(text.strip(), mode="exec")
        except SyntaxError as error:
            raise ValueError(f"text: not a DARTS genotype string ({error.msg})") from error
        except (ValueError, RecursionError, MemoryError) as error:
            raise ValueError(f"text: not a DARTS genotype string ({error})") from error
        if len(module.body) != 1:
            raise ValueError("text: expected exactly one Genotype(...) expression")
        statement = module.body[0]
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            call = statement.value
        elif isinstance(statement, ast.Expr):
            call = statement.value
        else:
            raise ValueError("text: expected a Genotype(...) expression")
        func = call.func if isinstance(call, ast.Call) else None
        func_name = (
            func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        )
        if func_name != "Genotype":
            raise ValueError("text: expected a Genotype(...) expression")
        assert isinstance(call, ast.Call)  # a function name was found only on an ast.Call
        if len(call.args) > len(_FIELDS):
            raise ValueError(f"text: Genotype takes at most {len(_FIELDS)} fields, got {len(call.args)}")
        values: dict[str, Any] = {}
        for name, node in zip(_FIELDS, call.args, strict=False):
            values[name] = node
        for keyword in call.keywords:
            if keyword.arg is None or keyword.arg not in _FIELDS:
                raise ValueError(f"text: unknown Genotype field {keyword.arg!r}; expected {list(_FIELDS)}")
            if keyword.arg in values:
                raise ValueError(f"text: Genotype field {keyword.arg!r} given twice")
            values[keyword.arg] = keyword.value
        missing = [kind for kind in _CELL_KINDS if kind not in values]
        if missing:
            raise ValueError(f"text: missing Genotype fields {missing}")
        return cls(
            # __post_init__ normalises the parsed lists of pairs into tuples of genes.
            normal=cast("tuple[Gene, ...]", _parse_genes("normal", values["normal"])),
            normal_concat=_parse_concat("normal_concat", values.get("normal_concat")),
            reduce=cast("tuple[Gene, ...]", _parse_genes("reduce", values["reduce"])),
            reduce_concat=_parse_concat("reduce_concat", values.get("reduce_concat")),
            primitives=primitives,
        )

    def __str__(self) -> str:
        return self.to_darts()

    def __repr__(self) -> str:
        return self.to_darts()


def _literal(name: str, node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as error:
        raise ValueError(f"{name}: only literal values are allowed, got {ast.unparse(node)!r}") from error


def _parse_genes(name: str, node: ast.expr) -> list[Any]:
    value = _literal(name, node)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name}: expected a list of (op_name, input_index) pairs, got {value!r}")
    # Nested per-node form: each element is itself a list of pairs; flatten it node by node.
    if value and all(
        isinstance(item, (list, tuple)) and item and all(isinstance(pair, (list, tuple)) for pair in item)
        for item in value
    ):
        flat: list[Any] = []
        for node_index, node_genes in enumerate(value):
            if len(node_genes) != 2:
                raise ValueError(
                    f"{name}[{node_index}]: node has {len(node_genes)} entries; expected 2 (nested form)"
                )
            flat.extend(node_genes)
        return flat
    return list(value)


def _parse_concat(name: str, node: ast.expr | None) -> Any:
    if node is None:
        return None
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id == "range") or node.keywords:
            raise ValueError(f"{name}: expected range(start, stop) or a list, got {ast.unparse(node)!r}")
        bounds = [_literal(name, arg) for arg in node.args]
        if not 1 <= len(bounds) <= 3 or not all(_is_int(bound) for bound in bounds):
            raise ValueError(f"{name}: range() needs 1 to 3 integer arguments, got {ast.unparse(node)!r}")
        return range(*bounds)
    return _literal(name, node)



#: The cells DARTS found on CIFAR-10 with the second-order search (Liu, Simonyan and Yang, ICLR 2019,
#: figures 4 and 5; ``DARTS_V2`` in the reference code): 2.76 % test error retrained at 36 channels,
#: 20 cells. A baseline to retrain next to a genotype of one's own.
DARTS_V2 = Genotype(
    normal=(
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1), ("skip_connect", 0),
        ("skip_connect", 0), ("dil_conv_3x3", 2),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        ("max_pool_3x3", 0), ("max_pool_3x3", 1),
        ("skip_connect", 2), ("max_pool_3x3", 1),
        ("max_pool_3x3", 0), ("skip_connect", 2),
        ("skip_connect", 2), ("max_pool_3x3", 1),
    ),
    reduce_concat=(2, 3, 4, 5),
)
