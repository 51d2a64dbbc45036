"""Load prompt/answer records from ``.jsonl`` (optionally ``.gz``), ``.parquet`` and ``.json``.

Every loader (and :mod:`rlcore.data.arith`) produces the same record format::

    {"id": str, "prompt": str, "answer": str, "metadata": dict, ...}

``prompt`` is the user-message text, ``answer`` the ground truth that rewards check against.

Field mapping: ``fields`` maps *our* names to the file's column names, e.g.
``{"prompt": "problem", "answer": "solution"}``. Rules:

- ``prompt`` (default column ``"prompt"``) is required: a non-empty string.
- ``answer`` (default column ``"answer"``) is required: a string, or an int/float (converted
  with ``str``). Map it to ``None`` for prompt-only data (the record then has no ``answer``).
- ``id`` is optional: taken from the mapped column (default ``"id"``) when present, otherwise
  ``"<file stem>-<row number>"``. Duplicate ids are an error.
- ``metadata``: if mapped, that column (a dict) becomes the metadata; otherwise metadata holds
  every column that was not mapped to one of our fields.
- Any other key, e.g. ``{"difficulty": "level"}``, copies that (required) column into the
  record under our name.

A bad row raises :class:`DataError` naming the file and the row, e.g.
``data/x.jsonl:17: missing field 'problem' (mapped from 'prompt'); row keys: ['question', 'answer']``
(for ``.jsonl`` the number is the 1-based line number; for ``.parquet``/``.json`` it is
``file[row N]`` with N 1-based).

``split``: if ``path`` is a directory, the file for the split is picked from it
(``{split}.jsonl``, ``{split}.jsonl.gz``, ``{split}.parquet``, ``{split}.json`` or HF-style
``{split}-*.parquet`` shards, also under ``data/``); if ``path`` is a ``.json`` file holding an
object of splits (``{"train": [...], "test": [...]}``) it picks that key.

Hugging Face datasets: :func:`load_hf_dataset` takes a hub id (needs the optional ``datasets``
package and network; without it a :class:`DataError` says what to install) or a local directory
(a ``save_to_disk`` output or a downloaded snapshot of parquet/jsonl files; no ``datasets``
needed), with the same field mapping.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = ["DataError", "load_records", "load_hf_dataset", "write_jsonl", "DEFAULT_FIELDS"]

DEFAULT_FIELDS: dict[str, str | None] = {"prompt": "prompt", "answer": "answer", "id": "id"}


class DataError(ValueError):
    """A data file or row is malformed. The message names the file and row."""


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write records one JSON object per line (UTF-8). Returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return p


def _suffix(p: Path) -> str:
    name = p.name.lower()
    for ext in (".jsonl.gz", ".jsonl", ".parquet", ".json"):
        if name.endswith(ext):
            return ext
    return p.suffix.lower()


def _resolve_split(path: Path, split: str | None) -> Path:
    if not path.is_dir():
        return path
    if split is None:
        raise DataError(f"{path}: is a directory; pass split= to choose a file in it")
    for base in (path, path / "data"):
        for ext in (".jsonl", ".jsonl.gz", ".parquet", ".json"):
            cand = base / f"{split}{ext}"
            if cand.is_file():
                return cand
        shards = sorted(base.glob(f"{split}-*.parquet"))
        if shards:
            return shards[0] if len(shards) == 1 else base  # several shards: handled by caller
    raise DataError(f"{path}: no file for split {split!r} (looked for {split}.jsonl/.parquet/.json "
                    f"and {split}-*.parquet)")


def _iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None


def _iter_parquet(paths: list[Path]) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DataError(f"{paths[0]}: reading parquet needs pyarrow ({e})") from e
    for p in paths:
        try:
            table = pq.read_table(p)
        except Exception as e:
            raise DataError(f"{p}: cannot read parquet file ({e})") from e
        for i, row in enumerate(table.to_pylist(), 1):
            yield f"{p}[row {i}]", row


def _iter_json(path: Path, split: str | None) -> Iterator[tuple[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):
        if split is None:
            raise DataError(f"{path}: top level is an object with keys {sorted(data)[:10]}; "
                            f"expected a list of rows, or pass split= to pick one")
        if split not in data:
            raise DataError(f"{path}: no split {split!r}; available: {sorted(data)}")
        data = data[split]
        prefix = f"{path}[{split!r}]"
    elif split is not None:
        raise DataError(f"{path}: split={split!r} given but the file is a list, not an object of splits")
    else:
        prefix = str(path)
    if not isinstance(data, list):
        raise DataError(f"{prefix}: expected a list of rows, got {type(data).__name__}")
    for i, row in enumerate(data, 1):
        yield f"{prefix}[row {i}]", row


def _to_record(where: str, row: Any, fields: dict[str, str | None], stem: str, index: int) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: row is not an object (got {type(row).__name__})")

    def missing(ours: str, col: str) -> DataError:
        return DataError(f"{where}: missing field {col!r} (mapped from {ours!r}); row keys: {list(row)}")

    rec: dict[str, Any] = {}
    # prompt
    pcol = fields["prompt"]
    if pcol is None:
        raise DataError("fields['prompt'] cannot be None")
    if pcol not in row:
        raise missing("prompt", pcol)
    prompt = row[pcol]
    if not isinstance(prompt, str):
        raise DataError(f"{where}: field {pcol!r} (mapped from 'prompt') must be a string, "
                        f"got {type(prompt).__name__}")
    if not prompt.strip():
        raise DataError(f"{where}: field {pcol!r} (mapped from 'prompt') is empty")
    rec["prompt"] = prompt
    # answer
    acol = fields.get("answer")
    if acol is not None:
        if acol not in row:
            raise missing("answer", acol)
        ans = row[acol]
        if isinstance(ans, bool) or not isinstance(ans, (str, int, float)):
            raise DataError(f"{where}: field {acol!r} (mapped from 'answer') must be a string or number, "
                            f"got {type(ans).__name__}")
        rec["answer"] = ans if isinstance(ans, str) else str(ans)
    # id
    icol = fields.get("id")
    if icol is not None and row.get(icol) is not None:
        rec["id"] = str(row[icol])
    else:
        rec["id"] = f"{stem}-{index}"
    # extra mapped fields
    for ours, col in fields.items():
        if ours in ("prompt", "answer", "id", "metadata") or col is None:
            continue
        if col not in row:
            raise missing(ours, col)
        rec[ours] = row[col]
    # metadata
    mcol = fields.get("metadata")
    if mcol is not None:
        if mcol not in row:
            raise missing("metadata", mcol)
        meta = row[mcol]
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise DataError(f"{where}: field {mcol!r} (mapped from 'metadata') must be an object, "
                            f"got {type(meta).__name__}")
        rec["metadata"] = dict(meta)
    else:
        used = {c for c in fields.values() if c is not None}
        rec["metadata"] = {k: v for k, v in row.items() if k not in used}
    return rec


def load_records(
    path: str | os.PathLike,
    *,
    fields: dict[str, str] | None = None,
    split: str | None = None,
) -> list[dict]:
    """Load and validate records from ``path`` (see the module docstring for the rules).

    Raises ``FileNotFoundError`` if ``path`` does not exist and :class:`DataError` for an
    unsupported format, an empty file or any bad row.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    mapping, id_required = _mapping(fields)

    target = _resolve_split(p, split)
    if target.is_dir():  # several HF-style shards
        paths = sorted(target.glob(f"{split}-*.parquet"))
        rows: Iterable[tuple[str, Any]] = _iter_parquet(paths)
        stem = split or target.name
    else:
        ext = _suffix(target)
        stem = target.name.split(".")[0]
        if ext in (".jsonl", ".jsonl.gz"):
            if split is not None and not p.is_dir():
                raise DataError(f"{target}: split={split!r} given but the path is a single .jsonl file")
            rows = _iter_jsonl(target)
        elif ext == ".parquet":
            if split is not None and not p.is_dir():
                raise DataError(f"{target}: split={split!r} given but the path is a single .parquet file")
            rows = _iter_parquet([target])
        elif ext == ".json":
            rows = _iter_json(target, None if p.is_dir() else split)
        else:
            raise DataError(f"{target}: unsupported file type {ext!r} (use .jsonl, .jsonl.gz, .parquet or .json)")
    return _collect(rows, mapping, stem, id_required, str(target))


def _mapping(fields: dict[str, str] | None) -> tuple[dict[str, str | None], bool]:
    """Our-name -> column mapping with defaults, and whether the id column is required."""
    mapping: dict[str, str | None] = dict(DEFAULT_FIELDS)
    if fields:
        for k, v in fields.items():
            if v is not None and not isinstance(v, str):
                raise DataError(f"fields[{k!r}] must be a column name (str) or None, got {v!r}")
        mapping.update(fields)
    if mapping.get("prompt") is None:
        raise DataError("fields['prompt'] must name a column")
    # the default id column is optional; a custom-mapped id column is required
    return mapping, bool(fields and fields.get("id") not in (None, "id"))


def _collect(rows: Iterable[tuple[str, Any]], mapping: dict, stem: str, id_required: bool, where_all: str) -> list[dict]:
    records: list[dict] = []
    seen_ids: dict[str, str] = {}
    for index, (where, row) in enumerate(rows, 1):
        if id_required and isinstance(row, dict) and mapping["id"] not in row:
            raise DataError(f"{where}: missing field {mapping['id']!r} (mapped from 'id'); row keys: {list(row)}")
        rec = _to_record(where, row, mapping, stem, index)
        if rec["id"] in seen_ids:
            raise DataError(f"{where}: duplicate id {rec['id']!r} (first seen at {seen_ids[rec['id']]})")
        seen_ids[rec["id"]] = where
        records.append(rec)
    if not records:
        raise DataError(f"{where_all}: no records")
    return records


# ------------------------------------------------------------------ Hugging Face datasets

_NO_DATASETS = ("loading {what} needs the optional `datasets` package, which is not installed "
                "(pip install datasets); or download the data and point the path at local "
                ".jsonl/.parquet files or a directory of them")


def _import_datasets(what: str):
    try:
        import datasets
    except ImportError as e:
        raise DataError(_NO_DATASETS.format(what=what)) from e
    return datasets


def _is_saved_dataset(p: Path) -> bool:
    """A directory written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return (p / "state.json").is_file() or (p / "dataset_dict.json").is_file()


def _iter_saved_dataset(p: Path, split: str | None) -> Iterator[tuple[str, Any]]:
    """Rows of a `save_to_disk` directory: via `datasets.load_from_disk` when installed, else
    by reading its Arrow stream shards with pyarrow (what `save_to_disk` writes, already flat)."""
    if (p / "dataset_dict.json").is_file():
        splits = json.loads((p / "dataset_dict.json").read_text()).get("splits", [])
        if split is None or split not in splits:
            raise DataError(f"{p}: a saved DatasetDict with splits {splits}; pass a split that exists (got {split!r})")
        p = p / split
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None:
        ds = datasets.load_from_disk(str(p))
        for i, row in enumerate(ds, 1):
            yield f"{p}[row {i}]", row
        return
    import pyarrow as pa

    state = json.loads((p / "state.json").read_text())
    if state.get("_indices_data_files"):  # pragma: no cover - save_to_disk flattens indices
        raise DataError(_NO_DATASETS.format(what=f"{p} (it has an indices mapping)"))
    i = 0
    for entry in state.get("_data_files", []):
        shard = p / entry["filename"]
        try:
            with pa.memory_map(str(shard)) as source:
                table = pa.ipc.open_stream(source).read_all()
        except Exception as e:
            raise DataError(f"{shard}: cannot read Arrow shard ({e})") from e
        for row in table.to_pylist():
            i += 1
            yield f"{p}[row {i}]", row


def load_hf_dataset(
    name_or_path: str | os.PathLike,
    *,
    split: str = "train",
    fields: dict[str, str] | None = None,
    config_name: str | None = None,
    revision: str | None = None,
) -> list[dict]:
    """Records from a Hugging Face dataset: a local directory if ``name_or_path`` exists, else a
    hub id (needs the optional ``datasets`` package and network).

    Local directories work without ``datasets``: a `save_to_disk` output (``state.json`` /
    ``dataset_dict.json``) or a hub snapshot of ``.parquet``/``.jsonl`` files, looked up as
    ``{split}.*`` or ``{split}-*.parquet`` in the directory, its ``data/`` or its ``config_name/``
    folder. Field mapping and validation are those of :func:`load_records`.
    """
    mapping, id_required = _mapping(fields)
    p = Path(name_or_path)
    if p.exists():
        if p.is_dir() and _is_saved_dataset(p):
            return _collect(_iter_saved_dataset(p, split), mapping, split, id_required, str(p))
        if p.is_dir() and config_name and (p / config_name).is_dir():
            p = p / config_name
        return load_records(p, fields=fields, split=split if p.is_dir() else None)
    name = str(name_or_path)
    datasets = _import_datasets(f"the hub dataset {name!r}")
    try:
        ds = datasets.load_dataset(name, config_name, split=split, revision=revision)
    except Exception as e:
        raise DataError(f"{name}: cannot load split {split!r} from the hub ({type(e).__name__}: {e})") from e
    rows = ((f"{name}[{split}][row {i}]", row) for i, row in enumerate(ds, 1))
    return _collect(rows, mapping, f"{name.replace('/', '_')}-{split}", id_required, name)
