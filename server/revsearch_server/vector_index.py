"""A collection's vector index, a typed domain value: which structure (FLAT, HNSW, IVF_FLAT,
IVF_SQ8, DISKANN), its build parameters and its default search breadth, with their limits and
defaults, the Milvus parameters they become, and the per-request breadth.

Which types a store builds is the store's answer (VectorStore.index_types): Milvus Lite 2.5 has
FLAT only (it builds FLAT whatever it is asked for), a Milvus server all five, exact KNN is FLAT by
nature. The server's default, HNSW with M 16 and efConstruction 200, searched with ef 128, was chosen
by benchmarks/bench_scale.py on vectors of real embeddings (benchmarks/results/scale.md).
Search breadth: HNSW's ef (candidates kept while walking the graph; at least top_k), IVF's nprobe
(clusters scanned, at most nlist), DISKANN's search_list (at least top_k); FLAT has none (exact).
Collections created before the choice existed have no setting: they keep what the store built
then (a server's AUTOINDEX, HNSW there, searched with ef 256; Lite's FLAT).
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, replace

from .errors import InvalidArgument


class IndexType(str, enum.Enum):
    FLAT = "FLAT"  # exact: every vector compared with the query
    HNSW = "HNSW"  # a proximity graph in memory
    IVF_FLAT = "IVF_FLAT"  # vectors in nlist clusters; nprobe of them scanned
    IVF_SQ8 = "IVF_SQ8"  # as IVF_FLAT with 8-bit scalar-quantized vectors (a quarter of the memory)
    DISKANN = "DISKANN"  # a graph on local disk (Milvus servers built with it)
    AUTOINDEX = "AUTOINDEX"  # only collections created before the choice, on a Milvus server


# (lowest, highest, default) of each parameter: Milvus's own limits where it has them.
HNSW_M = (4, 64, 16)
HNSW_EF_CONSTRUCTION = (8, 512, 200)
IVF_NLIST = (1, 65536, 1024)
HNSW_EF = (1, 32768, 128)
IVF_NPROBE = (1, 65536, 16)
DISKANN_SEARCH_LIST = (1, 65535, 100)
LEGACY_EF = 256  # what collections created before the choice are searched with on a server

SERVER_DEFAULT = IndexType.HNSW
CHOOSABLE = (IndexType.FLAT, IndexType.HNSW, IndexType.IVF_FLAT, IndexType.IVF_SQ8, IndexType.DISKANN)


@dataclass(frozen=True)
class IndexRequest:
    """What CreateCollection asked for (None: not set, the default applies)."""
    type: IndexType | None = None
    hnsw_m: int | None = None
    hnsw_ef_construction: int | None = None
    ivf_nlist: int | None = None
    search_breadth: int | None = None


@dataclass(frozen=True)
class VectorIndexSpec:
    """A collection's index, every parameter filled in (0 where the type has none)."""
    type: IndexType = IndexType.FLAT
    hnsw_m: int = 0
    hnsw_ef_construction: int = 0
    ivf_nlist: int = 0
    search_breadth: int = 0

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def resolve(cls, asked: IndexRequest, supported: tuple[IndexType, ...], default: IndexType,
                store: str) -> "VectorIndexSpec":
        """The index for a new collection: asked's type (default when unset) with its parameters,
        defaults filled in; INVALID_ARGUMENT for a type the store does not build (naming the ones
        it does), a parameter of another type or a value out of range (naming the range)."""
        kind = asked.type or default
        if kind not in supported or kind is IndexType.AUTOINDEX:
            raise InvalidArgument(f"vector_index.type {kind.value} is not supported by {store}; it supports "
                                  f"{', '.join(t.value for t in supported)}")
        given = {k: v for k, v in asdict(asked).items() if k != "type" and v is not None}
        allowed = {IndexType.FLAT: set(), IndexType.HNSW: {"hnsw_m", "hnsw_ef_construction", "search_breadth"},
                   IndexType.IVF_FLAT: {"ivf_nlist", "search_breadth"}, IndexType.IVF_SQ8: {"ivf_nlist", "search_breadth"},
                   IndexType.DISKANN: {"search_breadth"}}[kind]
        foreign = sorted(set(given) - allowed)
        if foreign:
            raise InvalidArgument(f"vector_index.{foreign[0]} does not apply to a {kind.value} index (it takes "
                                  f"{', '.join(sorted(allowed)) or 'no parameters'})")
        spec = cls(type=kind)
        if kind is IndexType.HNSW:
            spec = replace(spec, hnsw_m=_within("vector_index.hnsw_m", given.get("hnsw_m"), HNSW_M),
                           hnsw_ef_construction=_within("vector_index.hnsw_ef_construction",
                                                        given.get("hnsw_ef_construction"), HNSW_EF_CONSTRUCTION))
        elif kind in (IndexType.IVF_FLAT, IndexType.IVF_SQ8):
            spec = replace(spec, ivf_nlist=_within("vector_index.ivf_nlist", given.get("ivf_nlist"), IVF_NLIST))
        if kind is not IndexType.FLAT:
            spec = replace(spec, search_breadth=spec.breadth(given.get("search_breadth"), "vector_index.search_breadth"))
        return spec

    @classmethod
    def legacy(cls, lite: bool, ef: int = LEGACY_EF) -> "VectorIndexSpec":
        """What a collection created before the choice uses: Lite's FLAT, a server's AUTOINDEX searched
        with ef (the server's --milvus-search-ef)."""
        return cls() if lite else cls(type=IndexType.AUTOINDEX, search_breadth=ef)

    def to_dict(self) -> dict:
        return asdict(self) | {"type": self.type.value}

    @classmethod
    def from_dict(cls, d: dict) -> "VectorIndexSpec":
        return cls(**d | {"type": IndexType(d["type"])})

    # -- searching -----------------------------------------------------------------------------
    def breadth(self, asked: int | None, field: str = "search_breadth") -> int:
        """A search breadth for this index: asked, checked against the type's range (IVF: at most
        nlist), or the collection's (the type's default while it has none); 0 for FLAT, which is
        exact and takes none (asked is ignored there: a client may send one to every collection)."""
        if self.type is IndexType.FLAT:
            return 0
        low, high, default = {IndexType.DISKANN: DISKANN_SEARCH_LIST, IndexType.IVF_FLAT: IVF_NPROBE,
                              IndexType.IVF_SQ8: IVF_NPROBE}.get(self.type, HNSW_EF)
        if self.ivf_nlist:
            high = self.ivf_nlist
        if asked is None:
            return self.search_breadth or min(default, high)
        return _within(field, asked, (low, high, default),
                       f" ({self._breadth_name()} of this {self.type.value} index"
                       + (f", at most its nlist {self.ivf_nlist})" if self.ivf_nlist else ")"))

    def _breadth_name(self) -> str:
        return {IndexType.HNSW: "ef", IndexType.AUTOINDEX: "ef", IndexType.DISKANN: "search_list"}.get(
            self.type, "nprobe")

    def milvus_index(self) -> tuple[str, dict]:
        """(index_type, params) for Milvus's create_index."""
        if self.type is IndexType.HNSW:
            return "HNSW", {"M": self.hnsw_m, "efConstruction": self.hnsw_ef_construction}
        if self.type in (IndexType.IVF_FLAT, IndexType.IVF_SQ8):
            return self.type.value, {"nlist": self.ivf_nlist}
        return self.type.value, {}

    def milvus_search_params(self, top_k: int, breadth: int | None = None) -> dict:
        """Milvus's search params: the breadth (the collection's unless given), never below what
        the index needs for top_k hits (HNSW's ef and DISKANN's search_list at least top_k)."""
        b = breadth or self.search_breadth
        if self.type in (IndexType.HNSW, IndexType.AUTOINDEX):
            return {"metric_type": "COSINE", "params": {"ef": max(b, top_k)}}
        if self.type in (IndexType.IVF_FLAT, IndexType.IVF_SQ8):
            return {"metric_type": "COSINE", "params": {"nprobe": b}}
        if self.type is IndexType.DISKANN:
            return {"metric_type": "COSINE", "params": {"search_list": max(b, top_k)}}
        return {"metric_type": "COSINE"}

    def detail(self) -> str:
        """One line for DescribeCollection, e.g. "HNSW (M 16, efConstruction 200), searched with ef 128"."""
        if self.type is IndexType.FLAT:
            return "FLAT: exact search, every vector compared (no parameters)"
        if self.type is IndexType.AUTOINDEX:
            return (f"AUTOINDEX (created before the index could be chosen: the server's choice, HNSW), searched "
                    f"with ef {self.search_breadth}")
        build = {IndexType.HNSW: f" (M {self.hnsw_m}, efConstruction {self.hnsw_ef_construction})",
                 IndexType.IVF_FLAT: f" (nlist {self.ivf_nlist})", IndexType.IVF_SQ8: f" (nlist {self.ivf_nlist})"
                 }.get(self.type, "")
        return f"{self.type.value}{build}, searched with {self._breadth_name()} {self.search_breadth}"


def _within(field: str, value: int | None, limits: tuple[int, int, int], what: str = "") -> int:
    low, high, default = limits
    if value is None:
        return default
    if not low <= value <= high:
        raise InvalidArgument(f"{field} is {value}{what}; use {low}..{high}")
    return int(value)
