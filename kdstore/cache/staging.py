"""A cache's staging directory, and what `--resume` may reuse of it.

A store is built in OUT's hidden sibling `.NAME.partial` (store.staging_dir): its .beton files
and teacher.h5 where the store will have them, and kdstore's books in `.kdstore-staging/`
(store.STAGE_MARKER, removed by `publish` just before the rename): the options the cache was
started with (cache-state.json), the teacher's output chunks of each pass, --budget's plan, the
sha256 of every finished piece (sealed.json; each chunk beside it as NNNNNN.sha256), and, once
teacher.h5 is written, what the manifest records of the pass (finished.json).

A resume reuses a piece only if its sha256 is the one recorded when it was finished; anything
else is redone, with one line saying which and why."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kdstore.errors import KdstoreError
from kdstore.options import write_json
from kdstore.runtime.console import say
from kdstore.runtime.hashing import sha256_file
from kdstore.store.publish import STAGE_MARKER

STATE = "cache-state.json"
SEALED = "sealed.json"
FINISHED = "finished.json"


class Staging:
    """The staging directory `root` of one cache: its pieces and its books."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.books = self.root / STAGE_MARKER

    def state(self) -> dict[str, Any] | None:
        """The options the partial cache was started with (None when there is no record of them);
        a record that cannot be read is a one-line error."""
        path = self.books / STATE
        if not path.is_file():
            return None
        state = _read_json(path)
        if not isinstance(state, dict):
            raise KdstoreError(
                f"--resume: {path} is corrupt (not a JSON object); rerun without --resume to start again"
            )
        return state

    def seal(self, piece: Path) -> None:
        """Record a finished piece's sha256 (main rank only: the ledger is one file)."""
        ledger = self._ledger()
        ledger[piece.name] = sha256_file(piece)
        tmp = self.books / f".{SEALED}.tmp"
        write_json(tmp, ledger)
        os.replace(tmp, self.books / SEALED)

    def reusable(self, piece: Path) -> bool:
        """Whether a piece left by the killed run can be reused: present, and with the sha256
        recorded when it was finished. A damaged or unrecorded one is removed, saying so."""
        if not piece.is_file():
            return False
        recorded = self._ledger().get(piece.name)
        if recorded is not None and sha256_file(piece) == recorded:
            return True
        why = (
            "was not finished"
            if recorded is None
            else "differs from the sha256 recorded when it was written (damaged?)"
        )
        say(f"--resume: {piece.name} in the partial cache {why}; making it again")
        piece.unlink()
        return False

    def finish(self, info: dict[str, Any]) -> None:
        """teacher.h5 is written (and sealed): what the manifest records, for a resumed publish."""
        write_json(self.books / FINISHED, info)

    def finished(self) -> dict[str, Any] | None:
        """What `finish` recorded, or None when the teacher outputs are not yet in teacher.h5."""
        path = self.books / FINISHED
        if not path.is_file():
            return None
        info = _read_json(path)
        return info if isinstance(info, dict) else None

    def _ledger(self) -> dict[str, str]:
        path = self.books / SEALED
        ledger = _read_json(path) if path.is_file() else {}
        return ledger if isinstance(ledger, dict) else {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KdstoreError(
            f"--resume: {path} cannot be read ({type(e).__name__}); rerun without --resume to start again"
        ) from None
