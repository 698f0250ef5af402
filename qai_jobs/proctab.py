"""The process table, read from /proc (Linux): shared by `qai-jobs up`'s supervisor and the
local provider, which both have to find and stop what a process left behind."""

from __future__ import annotations

import os

# Indexes into stat_fields(): /proc/<pid>/stat from the state on (see proc(5)).
STATE, PPID, SESSION, START = 0, 1, 3, 19


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (zombies included), from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_fields(int(entry))) is not None:
            children.setdefault(int(fields[PPID]), []).append(int(entry))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found
