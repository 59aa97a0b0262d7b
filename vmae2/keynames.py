"""Lists of state-dict keys on one short line, for messages (:func:`summarize_keys`)."""
from __future__ import annotations


def summarize_keys(keys, limit: int = 8) -> str:
    """``keys`` on one short line, in natural order: keys under one numbered block become ``blocks.3.*``, runs of
    consecutive blocks ``blocks.2-5.*`` (with the key count); past ``limit`` entries, ``... and N more``."""
    def natural(key):
        return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split(".")]

    entries: list[list] = []  # [prefix or None, first index, last index, keys]
    for key in sorted(keys, key=natural):
        parts = key.split(".")
        i = next((j for j, p in enumerate(parts[:-1]) if p.isdigit()), None)
        prefix, index = (".".join(parts[:i]), int(parts[i])) if i is not None else (None, None)
        last = entries[-1] if entries else None
        if prefix is not None and last and last[0] == prefix and index in (last[2], last[2] + 1):
            last[2] = index
            last[3].append(key)
        else:
            entries.append([prefix, index, index, [key]])
    labels = []
    for prefix, first, last, members in entries:
        if len(members) == 1:
            labels.append(members[0])
        else:
            span = str(first) if first == last else f"{first}-{last}"
            labels.append(f"{prefix}.{span}.* ({len(members)})")
    more = f", ... and {len(labels) - limit} more" if len(labels) > limit else ""
    return ", ".join(labels[:limit]) + more
