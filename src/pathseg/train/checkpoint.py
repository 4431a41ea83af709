"""Resumable training checkpoints shared by the nucleus and refiner trainers: the trained module, optimiser,
schedule, iteration and best validation scores in one file, written atomically, read with ``weights_only``; and the
trim of a resumed run's ``history.jsonl`` (every trainer's, done by the process that writes it)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pathseg.errors import PathsegError
from pathseg.io.atomic import atomic_path


def save_checkpoint(path: Path, module: torch.nn.Module, key: str, opt, sched, step: int, best: dict) -> None:
    """Write ``module``'s weights (under ``key``), ``opt``, ``sched``, ``step`` and ``best`` to ``path``."""
    payload = {
        key: module.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "iteration": step,
        "best": json.dumps(best),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def resume(path: Path, module: torch.nn.Module, key: str, opt, sched) -> tuple[int, dict] | None:
    """Restore a checkpoint written by :func:`save_checkpoint`; (iteration, best scores), or None if there is none."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if key not in state:
        raise PathsegError(
            f"{path}: holds no {key!r} weights (written by another trainer or an older pathseg); "
            "start the run in a new output folder"
        )
    module.load_state_dict(state[key])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return int(state["iteration"]), json.loads(state["best"])


def trim_history(path: Path, iteration: int) -> None:
    """Keep the records of a run's ``history.jsonl`` up to ``iteration``, the checkpoint a run resumes from: a run
    stopped between checkpoints logged steps it repeats on resume, and a line cut short by the stop is dropped too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(record.get("iteration", 0)) <= iteration:
            kept.append(line)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(f"{line}\n" for line in kept))
