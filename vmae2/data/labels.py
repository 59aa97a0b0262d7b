"""Class-name label maps, the Kinetics-710 style merge of labeled lists, and K710 → K400/600/700 head conversion.

Name matching. Two class names are the same class when their normalised forms are equal
(:func:`normalize_name`): surrounding blanks and one pair of surrounding quotes removed, case folded,
underscores read as spaces, runs of blanks collapsed to one space. So ``"Passing American football (in game)"``,
``passing_american_football_(in_game)`` and ``passing american  football (in game)`` match. Nothing fuzzier is
done: classes that Kinetics renamed between versions (``dying hair`` → ``dyeing hair``) are different names and
must be given as ``aliases`` (see :func:`read_aliases`; the official ``misc/k710_identical_label_merge.json``
plays that role).

The K710 construction (official ``docs/DATASET.md``): take the K400/600/700 lists, merge the classes by name
(:func:`merge_label_maps`), relabel every record into the merged space and drop repeated videos by YouTube id
(:func:`merge_labeled_lists`); for the validation split, also drop videos present in the merged training split
(``exclude=video_ids(train.records)``). To reproduce the official class order (needed to use the released K710
checkpoints), pass the official ``label_map_k710.txt`` as ``label_map=``; otherwise the order is first-seen.

Head conversion (official ``run_class_finetuning.py``): a 710-way ``head.weight``/``head.bias`` becomes a
400-way one by taking rows: ``head[index]`` with ``index[c]`` = row of the 710 head for target class ``c``
(:func:`head_index` from two label maps, or :func:`read_official_index` for ``misc/label_710to400.json``).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np
import torch

from vmae2.data.lists import VideoRecord, _data_lines, _join, _Where, normalize_name

__all__ = ["normalize_name", "LabelMap", "read_aliases", "merge_label_maps", "video_id", "video_ids",
           "SourceStats", "MergedLabeled", "merge_labeled_lists", "read_named_list", "head_index", "convert_head",
           "read_official_index"]

Aliases = Union[Mapping[str, str], Sequence[Sequence[str]]]

# Kinetics clip file names: <11-char YouTube id>_<start:06d>_<end:06d>; the id itself may contain '_' and '-'.
_KINETICS_STEM = re.compile(r"^([A-Za-z0-9_-]{11})_(\d{6})_(\d{6})$")


def _closest(name: str, keys: Iterable[str], display: Callable[[str], str], n: int = 3) -> str:
    close = difflib.get_close_matches(normalize_name(name), list(keys), n=n, cutoff=0.5)
    return ", ".join(repr(display(k)) for k in close) if close else "none"


class LabelMap:
    """Ordered class names; id ``i`` is ``names[i]``. Lookups use :func:`normalize_name`.

    ``origins`` (optional, one per name) describe where each name came from (``"file:line 3"``) for error
    messages. Two names with the same normalised form are an error naming both.
    """

    def __init__(self, names: Sequence[str], *, origins: Sequence[str] | None = None, source: str = "<names>"):
        names = tuple(str(n) for n in names)
        if origins is None:
            origins = [f"{source}: entry {i}" for i in range(len(names))]
        if len(origins) != len(names):
            raise ValueError(f"{source}: {len(origins)} origins for {len(names)} names")
        self.names: tuple[str, ...] = names
        self.source = source
        self._index: dict[str, int] = {}
        for i, n in enumerate(names):
            key = normalize_name(n)
            if not key:
                raise ValueError(f"{origins[i]}: empty class name")
            if key in self._index:
                j = self._index[key]
                raise ValueError(f"duplicate class name: {origins[j]} {names[j]!r} and {origins[i]} {n!r} are the "
                                 f"same class after normalisation ({key!r}); remove one of them")
            self._index[key] = i

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def read(cls, path) -> LabelMap:
        """Read a label map: a text file (one name per line, line ``i`` (1-based) is id ``i - 1``; blank lines
        are only allowed at the end), a JSON list of names (position = id), or a JSON object, either
        ``{name: id}`` or ``{"id": name}`` (decided by the value type), whose ids must be exactly ``0..N-1``.
        A file is read as JSON when its first non-blank character is ``[`` or ``{``."""
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
        src = str(path)
        if text.lstrip()[:1] in ("[", "{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{src}: not valid JSON ({e}); a label map is a text file with one class name "
                                 "a line, a JSON list of names, or a JSON object name -> id") from None
            return cls._from_json(data, src)
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                raise ValueError(f"{src}:{n}: blank line inside a label map; line i is class id i-1, so a blank "
                                 "line would shift every later id; remove it")
        if not lines:
            raise ValueError(f"{src}: empty label map")
        return cls([ln.strip() for ln in lines], origins=[f"{src}:{n}" for n in range(1, len(lines) + 1)],
                   source=src)

    @classmethod
    def _from_json(cls, data, src: str) -> LabelMap:
        if isinstance(data, list):
            bad = [i for i, x in enumerate(data) if not isinstance(x, str)]
            if bad:
                raise ValueError(f"{src}: a JSON label map list must hold class names (strings); entry {bad[0]} is "
                                 f"{data[bad[0]]!r}")
            if not data:
                raise ValueError(f"{src}: empty label map")
            return cls(data, origins=[f"{src}: entry {i}" for i in range(len(data))], source=src)
        if not isinstance(data, dict) or not data:
            raise ValueError(f"{src}: a JSON label map must be a non-empty list of names or an object name -> id")
        if all(isinstance(v, str) for v in data.values()):  # {"0": "abseiling", ...}
            pairs = []
            for k, v in data.items():
                try:
                    pairs.append((int(k), v))
                except ValueError:
                    raise ValueError(f"{src}: an object of names must be keyed by integer ids; key {k!r} is not an "
                                     "integer (or give {name: id})") from None
        else:
            pairs = []
            for k, v in data.items():
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ValueError(f"{src}: id of class {k!r} is {v!r}, not an integer; expected {{name: id}} "
                                     "with ids 0..N-1")
                pairs.append((v, k))
        ids = [i for i, _ in pairs]
        n = len(pairs)
        if sorted(ids) != list(range(n)):
            counts: dict[int, int] = {}
            for i in ids:
                counts[i] = counts.get(i, 0) + 1
            dup = sorted(i for i, c in counts.items() if c > 1)
            missing = sorted(set(range(n)) - set(ids))
            out = sorted(i for i in set(ids) if not 0 <= i < n)
            raise ValueError(f"{src}: class ids must be exactly 0..{n - 1} (each once); repeated ids: {dup[:10]}, "
                             f"missing ids: {missing[:10]}, out-of-range ids: {out[:10]}")
        pairs.sort()
        return cls([name for _, name in pairs], origins=[f"{src}: {name!r} (id {i})" for i, name in pairs],
                   source=src)

    def write(self, path) -> None:
        """Write the text format (one name a line, id order)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(n + "\n" for n in self.names))

    # -- lookups --------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __getitem__(self, i: int) -> str:
        return self.names[i]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and normalize_name(name) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self.keys() == other.keys()

    def __hash__(self) -> int:
        return hash(self.keys())

    def __repr__(self) -> str:
        head = ", ".join(repr(n) for n in self.names[:3])
        return f"LabelMap({len(self)} classes: {head}{', ...' if len(self) > 3 else ''}; source={self.source!r})"

    def keys(self) -> tuple[str, ...]:
        """Normalised names in id order."""
        return tuple(normalize_name(n) for n in self.names)

    def get(self, name: str, default: int | None = None) -> int | None:
        return self._index.get(normalize_name(name), default)

    def id(self, name: str) -> int:
        """Id of ``name``; ``ValueError`` naming the closest known names when it is unknown."""
        i = self._index.get(normalize_name(name))
        if i is None:
            raise ValueError(f"unknown class name {name!r} in {self.source} ({len(self)} classes); closest: "
                             f"{self.suggest(name)}")
        return i

    def suggest(self, name: str, n: int = 3) -> str:
        """The closest known names (difflib), formatted for a message."""
        return _closest(name, self._index, lambda k: self.names[self._index[k]], n)


# -- aliases ----------------------------------------------------------------------------------------------

def _alias_table(aliases: Aliases | None) -> dict[str, str]:
    """Normalised alias -> normalised canonical name."""
    if aliases is None:
        return {}
    if isinstance(aliases, Mapping):
        pairs = [(a, c) for a, c in aliases.items()]
    else:
        pairs = []
        for g, group in enumerate(aliases):
            if isinstance(group, str) or len(group) < 1:
                raise ValueError(f"alias group {g} must be a list of names (canonical first), got {group!r}")
            pairs += [(a, group[0]) for a in group[1:]]
    table: dict[str, str] = {}
    for a, c in pairs:
        ka, kc = normalize_name(a), normalize_name(c)
        if ka == kc:
            continue
        if ka in table and table[ka] != kc:
            raise ValueError(f"alias {a!r} is mapped to two names: {table[ka]!r} and {kc!r}")
        table[ka] = kc
    chained = sorted(c for c in table.values() if c in table)
    if chained:
        raise ValueError(f"aliases must map straight to a canonical name, but {chained[0]!r} is both a canonical "
                         f"name and an alias of {table[chained[0]]!r}")
    return table


def read_aliases(path) -> dict[str, str]:
    """Read class-name aliases: a JSON object ``{alias: canonical}`` or a JSON list of groups
    ``[[canonical, alias, ...], ...]``. Returns normalised ``{alias: canonical}``. (The layout of the official
    ``k710_identical_label_merge.json`` is not checked here; convert it to one of these two if it differs.)"""
    with open(path, encoding="utf-8-sig") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, (dict, list)):
        raise ValueError(f"{path}: expected {{alias: canonical}} or [[canonical, alias, ...], ...]")
    try:
        return _alias_table(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _canonical_keys(m: LabelMap, table: Mapping[str, str]) -> list[str]:
    keys = [table.get(k, k) for k in m.keys()]
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k in seen:
            raise ValueError(f"{m.source}: classes {m[seen[k]]!r} (id {seen[k]}) and {m[i]!r} (id {i}) become the "
                             f"same class {k!r} through the aliases; a label map cannot merge two of its own classes")
        seen[k] = i
    return keys


# -- merging label maps -----------------------------------------------------------------------------------

def merge_label_maps(maps: Sequence[LabelMap], *, aliases: Aliases | None = None
                     ) -> tuple[LabelMap, list[np.ndarray]]:
    """Union of the classes of ``maps``, matched by normalised name (and ``aliases``).

    Order: first seen: the classes of ``maps[0]`` in id order, then the new classes of ``maps[1]`` in id order,
    and so on. A merged class keeps its first-seen spelling. Returns the merged map and, per input map, an int64
    array ``old_id -> new_id``.
    """
    if not maps:
        raise ValueError("merge_label_maps needs at least one LabelMap")
    table = _alias_table(aliases)
    names: list[str] = []
    origins: list[str] = []
    where: dict[str, int] = {}
    mappings = []
    for m in maps:
        keys = _canonical_keys(m, table)
        out = np.empty(len(m), dtype=np.int64)
        for i, k in enumerate(keys):
            if k not in where:
                where[k] = len(names)
                names.append(m[i])
                origins.append(f"{m.source}: {m[i]!r} (id {i})")
            out[i] = where[k]
        mappings.append(out)
    return LabelMap(names, origins=origins, source="merged(" + ", ".join(m.source for m in maps) + ")"), mappings


def _map_into(m: LabelMap, target: LabelMap, table: Mapping[str, str]) -> np.ndarray:
    """``old_id -> id in target`` for every class of ``m``; error listing the classes ``target`` lacks."""
    tkeys = {k: i for i, k in enumerate(_canonical_keys(target, table))}
    keys = _canonical_keys(m, table)
    missing = [i for i, k in enumerate(keys) if k not in tkeys]
    if missing:
        def near(i: int) -> str:
            return _closest(keys[i], tkeys, lambda k: target[tkeys[k]])
        shown = "; ".join(f"{m[i]!r} (closest: {near(i)})" for i in missing[:10])
        raise ValueError(f"{len(missing)} classes of {m.source} are not in {target.source}: {shown}"
                         f"{' ...' if len(missing) > 10 else ''}; fix the names or give aliases")
    return np.array([tkeys[k] for k in keys], dtype=np.int64)


# -- video ids --------------------------------------------------------------------------------------------

def video_id(path: str) -> str:
    """The id used to find the same video in several lists: for a Kinetics clip name
    ``<ytid>_<start:06d>_<end:06d>[.ext]`` the 11-character YouTube id (which may itself contain ``_`` and ``-``);
    for any other name the file stem (base name without its last extension; a rawframe folder's base name).
    So two clips of one YouTube video count as the same video, as in the official K710 de-duplication."""
    base = os.path.basename(str(path).rstrip("/\\"))
    stem, _ = os.path.splitext(base)
    m = _KINETICS_STEM.match(stem) or _KINETICS_STEM.match(base)
    return m.group(1) if m else stem


def video_ids(records: Iterable[VideoRecord]) -> set[str]:
    """:func:`video_id` of every record (for ``exclude=`` of :func:`merge_labeled_lists`)."""
    return {video_id(r.path) for r in records}


# -- merging labeled lists --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceStats:
    """Per input list: ``total`` records = ``kept`` + ``duplicates`` (video id seen earlier, in this list or an
    earlier one) + ``excluded`` (video id in ``exclude``). ``label_conflicts``: duplicates whose merged label
    differs from the kept record's."""

    index: int
    name: str
    num_classes: int
    total: int
    kept: int
    duplicates: int
    excluded: int
    label_conflicts: int


@dataclass
class MergedLabeled:
    """Result of :func:`merge_labeled_lists`: relabelled ``records`` (source order, first occurrence kept), the
    merged ``label_map``, per-source ``mappings`` (``old_id -> new_id``) and ``stats``."""

    records: list[VideoRecord]
    label_map: LabelMap
    mappings: list[np.ndarray]
    stats: list[SourceStats]

    def summary(self) -> str:
        rows = [f"{len(self.records)} videos, {len(self.label_map)} classes"]
        for s in self.stats:
            rows.append(f"  [{s.index}] {s.name}: {s.total} records, {s.num_classes} classes -> kept {s.kept}, "
                        f"duplicates {s.duplicates} (label conflicts {s.label_conflicts}), excluded {s.excluded}")
        return "\n".join(rows)


def merge_labeled_lists(sources: Sequence[tuple[Sequence[VideoRecord], LabelMap]], *,
                        label_map: LabelMap | None = None, aliases: Aliases | None = None,
                        exclude: Iterable[str] = ()) -> MergedLabeled:
    """Merge labeled lists whose labels index different label maps (K400/600/700 → K710).

    * Classes: ``label_map`` if given (for example the official ``label_map_k710.txt``; every source class must be
      in it), else :func:`merge_label_maps` of the source maps (first-seen order).
    * Records are relabelled into the merged space (``dataclasses.replace``; other fields kept).
    * A record whose :func:`video_id` was already kept (from any earlier source, or earlier in the same source)
      is dropped: the first occurrence in source order wins. Records whose video id is in ``exclude`` are dropped
      (pass the training ids when merging the validation lists).
    * Each record's label must be in ``[0, len(source_map))``; an unlabeled (``-1``) or out-of-range label is an
      error naming the source, the record and its label.
    """
    if not sources:
        raise ValueError("merge_labeled_lists needs at least one (records, LabelMap) pair")
    for i, src in enumerate(sources):
        if len(src) != 2 or not isinstance(src[1], LabelMap):
            raise ValueError(f"source {i} must be a (records, LabelMap) pair, got {type(src).__name__}")
    maps = [m for _, m in sources]
    table = _alias_table(aliases)
    if label_map is None:
        label_map, mappings = merge_label_maps(maps, aliases=table)
    else:
        mappings = [_map_into(m, label_map, table) for m in maps]
    excluded_ids = set(exclude)
    kept_label: dict[str, int] = {}
    out: list[VideoRecord] = []
    stats = []
    for si, ((records, m), mapping) in enumerate(zip(sources, mappings)):
        name = records[0].source if len(records) else f"source {si}"
        kept = dup = excl = conflicts = 0
        for ri, r in enumerate(records):
            if not 0 <= r.label < len(m):
                raise ValueError(f"source {si} ({name}), record {ri} ({r.path}): label {r.label} is outside "
                                 f"[0, {len(m)}) of its label map {m.source}; pair each list with the label map "
                                 "its labels index (or read it with num_classes= to catch this earlier)")
            vid = video_id(r.path)
            new = int(mapping[r.label])
            if vid in excluded_ids:
                excl += 1
            elif vid in kept_label:
                dup += 1
                conflicts += kept_label[vid] != new
            else:
                kept_label[vid] = new
                out.append(dataclasses.replace(r, label=new))
                kept += 1
        stats.append(SourceStats(si, name, len(m), len(records), kept, dup, excl, conflicts))
    return MergedLabeled(out, label_map, mappings, stats)


# -- lists labeled by class name --------------------------------------------------------------------------

def read_named_list(path, label_map: LabelMap, *, kind: str = "video", sep: str | None = None,
                    data_root: str = "", fname_tmpl: str = "img_{:05}.jpg", start_idx: int = 1, step: int = 4,
                    aliases: Aliases | None = None, source: str | None = None) -> list[VideoRecord]:
    """Read a list whose label column is a class name: ``path class name`` (``kind="video"``) or
    ``folder total_frames class name`` (``kind="rawframes"``). Labels become ``label_map`` ids.

    With ``sep=None`` columns are blank separated, the path is the first word (no spaces) and the class name is
    the rest of the line (it may contain spaces); with ``sep`` (``","``, ``"\\t"``) the line is split on the
    first ``sep`` (two for rawframes), so paths may contain spaces. Blank and ``#`` lines are skipped, as in
    :mod:`vmae2.data.lists`. An unknown class name is an error naming the line, the name and the closest known
    names. Other fields as :func:`vmae2.data.lists.read_finetune_csv`.
    """
    if kind not in ("video", "rawframes"):
        raise ValueError(f"kind must be 'video' or 'rawframes', got {kind!r}")
    table = _alias_table(aliases)
    lookup = {table.get(k, k): i for i, k in enumerate(_canonical_keys(label_map, table))}
    src = str(path) if source is None else source
    ncols = 2 if kind == "video" else 3
    d = "," if sep == "," else (" " if sep is None else sep)
    fmt = d.join(["path", "class name"] if kind == "video" else ["folder", "total_frames", "class name"])
    records = []
    for n, line in _data_lines(path):
        w = _Where(path, n, line, fmt)
        parts = [p.strip() for p in (line.split(None, ncols - 1) if sep is None else line.split(sep, ncols - 1))]
        if len(parts) < ncols or not all(parts):
            raise w.error(f"expected {ncols} columns (the last one a class name), found {len(parts)}")
        key = normalize_name(parts[-1])
        label = lookup.get(table.get(key, key))
        if label is None:
            raise w.error(f"unknown class name {parts[-1]!r} (not in {label_map.source}, {len(label_map)} "
                          f"classes); closest: {label_map.suggest(parts[-1])}")
        full = _join(data_root, parts[0])
        if kind == "video":
            records.append(VideoRecord(full, 0, -1, label, True, "", step, src))
        else:
            try:
                total = int(parts[1])
            except ValueError:
                raise w.error(f"total_frames {parts[1]!r} is not an integer") from None
            if total <= 0:
                raise w.error(f"total_frames {total} must be >= 1")
            records.append(VideoRecord(full, start_idx, total, label, False, fname_tmpl, step, src))
    if not records:
        raise ValueError(f"{path}: no records (only blank or comment lines)")
    return records


# -- head conversion --------------------------------------------------------------------------------------

def head_index(from_map: LabelMap, to_map: LabelMap, *, aliases: Aliases | None = None) -> torch.Tensor:
    """``LongTensor [len(to_map)]``: for each class of ``to_map``, its row in a head trained on ``from_map``
    (e.g. K710 → K400). Error listing every ``to_map`` class that ``from_map`` lacks."""
    return torch.from_numpy(_map_into(to_map, from_map, _alias_table(aliases)))


def convert_head(state_dict: Mapping[str, torch.Tensor], index: torch.Tensor, *,
                 keys: Sequence[str] = ("head.weight", "head.bias")) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` whose ``keys`` (the classifier rows) are re-indexed: ``new[c] = old[index[c]]``.
    Other entries are shared, not copied. At least one key must be present (``keys`` can name prefixed keys such
    as ``module.head.weight``)."""
    index = torch.as_tensor(index)
    if index.ndim != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"index must be a 1-D integer tensor, got {index.dtype} of shape {tuple(index.shape)}")
    present = [k for k in keys if k in state_dict]
    if not present:
        raise ValueError(f"none of {list(keys)} is in the state dict (its head keys: "
                         f"{[k for k in state_dict if 'head' in k][:6]}); pass keys=")
    out = dict(state_dict)
    for k in present:
        t = state_dict[k]
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= t.shape[0]):
            raise ValueError(f"{k} has {t.shape[0]} rows but the index holds values in "
                             f"[{int(index.min())}, {int(index.max())}]")
        out[k] = t.index_select(0, index.to(device=t.device, dtype=torch.long))
    return out


def read_official_index(path, *, num_rows: int | None = 710, num_classes: int | None = None) -> torch.Tensor:
    """Read an official ``misc/label_710to{400,600,700}.json``: a JSON list of integers, entry ``c`` being the
    row of the ``num_rows``-way head for target class ``c``. Checks integers, range ``[0, num_rows)`` and, if
    given, the length ``num_classes``."""
    with open(path, encoding="utf-8-sig") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e}); expected a list of head rows") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of integers (row of the source head for each "
                         f"target class), got {type(data).__name__}")
    for c, v in enumerate(data):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{path}: entry {c} is {v!r}, not an integer row index")
        if v < 0 or (num_rows is not None and v >= num_rows):
            raise ValueError(f"{path}: entry {c} is {v}, outside [0, {num_rows}) of the source head; pass the "
                             "right num_rows (or None to skip the check)")
    if num_classes is not None and len(data) != num_classes:
        raise ValueError(f"{path}: {len(data)} entries but the target head has {num_classes} classes")
    return torch.tensor(data, dtype=torch.long)
