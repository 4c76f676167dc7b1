"""Rows kept per image by each process of a distributed run, merged so every process holds all."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def merge_across_ranks(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Every process's ``rows`` merged by ``row[key]`` (the image), on every process; the rows as
    they are outside a process group or with one process.

    DistributedSampler pads the last batch of a rank with repeated samples: the repeats carry the
    same key and count once. A collective call: every process of the group must make it.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return rows
    gathered: list[list[dict[str, Any]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, rows)
    merged: dict[Any, dict[str, Any]] = {}
    for rank_rows in gathered:
        for row in rank_rows or []:
            merged.setdefault(row[key], row)
    return list(merged.values())
