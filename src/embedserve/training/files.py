"""Uploaded training files (OpenAI's Files API, purpose `fine-tune`): what POST /v1/files keeps
and POST /v1/fine_tuning/jobs reads back by id (`training_file`, `validation_file`).

A file's bytes are `<state-dir>/files/<id>`, a path made of our own id: the client's filename is
metadata only, never a path. Its row (filename, purpose, size, time) is in the jobs' SQLite store
(training/store.py). Each file must be at most --max-file-bytes (413) and UTF-8 text holding at
least one pair (TSV `query<TAB>passage` or JSONL `{"anchor", "positive", "negative"?}`, parsed as
inline data is: 422 otherwise), so a file that could never train is refused when uploaded, not
when a job names it. A job copies the pairs into its own folder, so deleting a file afterwards
leaves the jobs made from it untouched.

No FastAPI here, and blocking I/O: the routes call these in a worker thread.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from embedserve.errors import FileNotFound, InvalidInput, PayloadTooLarge, shown
from embedserve.settings import Settings
from embedserve.training.data import Parsed, parse_pairs
from embedserve.training.intake import check_pairs
from embedserve.training.store import FileRecord, JobStore

__all__ = ["FINE_TUNE", "TrainingFiles"]

FINE_TUNE = "fine-tune"  # the only purpose kept here (OpenAI's name for fine-tuning data)
CHUNK = 1 << 20
MAX_FILENAME = 255


class TrainingFiles:
    def __init__(self, settings: Settings, store: Callable[[], JobStore]):
        """`store`: the job manager's store, or the error every fine-tuning route answers without it
        (400 without --models-dir, 503 before start-up)."""
        self.settings = settings
        self._store = store
        self.folder = settings.state_dir / "files"

    def save(self, source: BinaryIO, filename: str, purpose: str = FINE_TUNE) -> FileRecord:
        """Copies `source` to a new file: 413 past --max-file-bytes, 422 without a pair in it."""
        store = self._store()
        limit = self.settings.max_file_bytes
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.folder / f".{file_id}.partial"
        size = 0
        try:
            with partial.open("wb") as out:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise PayloadTooLarge(
                            f"the file is larger than the limit of {limit} bytes (--max-file-bytes)", param="file"
                        )
                    out.write(chunk)
            _parse(partial, "file")
            os.replace(partial, self.folder / file_id)
        finally:
            partial.unlink(missing_ok=True)
        record = FileRecord(file_id, _plain_filename(filename), purpose, size, time.time())
        try:
            store.insert_file(record)
        except BaseException:
            (self.folder / file_id).unlink(missing_ok=True)
            raise
        return record

    def get(self, file_id: str, param: str = "file_id") -> FileRecord:
        record = self._store().get_file(file_id)
        if record is None:
            raise FileNotFound(f"no file {shown(file_id)}", param=param)
        return record

    def list(self, *, purpose: str | None = None, limit: int | None = None, newest_first: bool = True,
             after: str | None = None) -> list[FileRecord]:
        return self._store().list_files(purpose=purpose, limit=limit, newest_first=newest_first, after=after)

    def delete(self, file_id: str) -> FileRecord:
        record = self.get(file_id)
        self._store().delete_file(file_id)
        (self.folder / record.id).unlink(missing_ok=True)
        return record

    def pairs(self, file_id: str, param: str) -> Parsed:
        """The pairs of an uploaded file, parsed as the same text inline would be (404 for an unknown id)."""
        record = self.get(file_id, param=param)
        path = self.folder / record.id
        if not path.is_file():  # deleted meanwhile
            raise FileNotFound(f"no file {shown(file_id)}", param=param)
        return _parse(path, param)


def _parse(path: Path, param: str) -> Parsed:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the file is not UTF-8 text (TSV query<TAB>passage lines or JSONL pairs)",
                           param=param) from None
    return check_pairs(parse_pairs(text), param)


def _plain_filename(name: str) -> str:
    """The client's filename as metadata: its last path component, at most MAX_FILENAME characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return (base or "file")[:MAX_FILENAME]
