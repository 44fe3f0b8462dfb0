"""Local copies of HF datasets: a ``save_to_disk`` directory or parquet files.

:func:`find_hf_table` looks in a directory (and first in its ``config`` sub-directory,
e.g. ``DocVQA/``) for one split of a dataset stored as

* ``datasets.DatasetDict.save_to_disk`` output (``dataset_dict.json`` + one directory
  per split), or ``Dataset.save_to_disk`` output (``state.json``), directly or in
  ``<split>/``;
* parquet files named as on the Hub, ``<split>-00000-of-00003.parquet`` (directly or
  one directory down, e.g. ``data/``), or ``<split>.parquet``, or any ``*.parquet`` in
  a ``<split>/`` directory.

Columns are read without the images; an image cell (the ``datasets.Image`` storage,
``{"bytes", "path"}``) is decoded only when a document's image is asked for.
"""

from __future__ import annotations

import io
import json
import re
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .base import CallableImage, DataFormatError, MissingImageError, open_image_file

_SHARDED = re.compile(r"^(?P<split>.+?)-\d+-of-\d+")


def _is_image_type(arrow_type) -> bool:
    import pyarrow as pa

    if not pa.types.is_struct(arrow_type):
        return False
    return {"bytes", "path"} <= {arrow_type.field(i).name for i in range(arrow_type.num_fields)}


def decode_image_cell(value: Any, base_dir: Path, where: str) -> Image.Image:
    """A PIL image from a ``datasets.Image`` cell; a one-line error if it is empty or unreadable."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    data = value.get("bytes") if isinstance(value, dict) else None
    path = value.get("path") if isinstance(value, dict) else None
    if data:
        try:
            with Image.open(io.BytesIO(data)) as opened:
                return opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as error:
            raise MissingImageError(f"cannot decode the image of {where}: {error.__class__.__name__}") from None
    if path:
        file = Path(path)
        return open_image_file(file if file.is_absolute() else base_dir / file)
    raise MissingImageError(f"{where} has no image")


def _cell_present(value: Any) -> bool:
    return isinstance(value, dict) and bool(value.get("bytes") or value.get("path"))


class HFTable:
    """One split of a local HF dataset copy: rows without images, images on demand.

    ``table`` is a pyarrow table of the columns (memory-mapped for ``save_to_disk``);
    ``cells(index, column)`` returns one image cell, for parquet by reading one row
    group of one column, so a large split is never read into memory at once.
    """

    def __init__(self, table, description: str, base_dir: Path, *, image_columns=None, cells=None):
        self._table = table
        self.description = description
        self.base_dir = base_dir
        if image_columns is None:
            image_columns = [f.name for f in table.schema if _is_image_type(f.type)]
        self.image_columns = list(image_columns)
        self._cells = cells or (lambda index, column: self._table.column(column)[index].as_py())

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys([*self._table.column_names, *self.image_columns]))

    def __len__(self) -> int:
        return self._table.num_rows

    def records(self, columns: list[str] | None = None) -> list[dict]:
        """Every row as a dict of its non-image columns (or of ``columns``)."""
        names = columns if columns is not None else [c for c in self.columns if c not in self.image_columns]
        return self._table.select(names).to_pylist()

    def column(self, name: str) -> list:
        return self._table.column(name).to_pylist()

    def cell(self, index: int, column: str) -> Any:
        if column in self.image_columns:
            return self._cells(index, column)
        return self._table.column(column)[index].as_py()

    def image(self, index: int, column: str = "image") -> Image.Image:
        return decode_image_cell(self.cell(index, column), self.base_dir, f"row {index} of {self.description}")

    def has_image(self, index: int, column: str = "image") -> bool:
        return _cell_present(self.cell(index, column))

    def image_ref(self, index: int, column: str = "image") -> CallableImage:
        """A lazy image reference to one cell, for :class:`~interp.data.tasks.base.Doc`."""
        return CallableImage(
            partial(self.image, index, column),
            partial(self.has_image, index, column),
            f"row {index} of {self.description}",
        )

    def require(self, columns: list[str], benchmark: str) -> None:
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise DataFormatError(
                f"{self.description} is not a {benchmark} copy: it has no {', '.join(repr(c) for c in missing)} "
                f"column (columns: {', '.join(self.columns)})"
            )


def find_hf_table(root: Path, split: str, *, config: str | None = None) -> HFTable | None:
    """The ``split`` of a local HF copy under ``root`` (or ``root/config``), or None."""
    bases = [root / config] if config and (root / config).is_dir() else []
    bases.append(root)
    for base in bases:
        table = _saved_dataset(base, split) or _parquet_split(base, split)
        if table is not None:
            return table
    return None


def _load_saved(directory: Path, split: str) -> HFTable:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(directory))
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as error:
        raise DataFormatError(f"cannot read the saved dataset in {directory}: {str(error).splitlines()[0]}") from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataFormatError(f"{directory} holds splits {', '.join(dataset)}, not {split!r}")
        dataset = dataset[split]
    elif dataset.split is not None and str(dataset.split) != split:
        raise DataFormatError(f"{directory} holds the {dataset.split} split, not {split!r}")
    table = dataset.with_format("arrow")[:]
    return HFTable(table, f"saved dataset {directory}", directory)


def _saved_dataset(base: Path, split: str) -> HFTable | None:
    if (base / "dataset_dict.json").is_file():
        try:
            splits = json.loads((base / "dataset_dict.json").read_text())["splits"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataFormatError(f"{base / 'dataset_dict.json'} is not a datasets DatasetDict index") from None
        if split not in splits:
            raise DataFormatError(f"{base} holds splits {', '.join(splits)}, not {split!r}")
        return _load_saved(base / split, split)
    if (base / "state.json").is_file():
        return _load_saved(base, split)
    if (base / split / "state.json").is_file():
        return _load_saved(base / split, split)
    return None


def _split_names(path: Path) -> set[str]:
    match = _SHARDED.match(path.stem)
    return {match["split"] if match else path.stem, path.parent.name}


def _parquet_split(base: Path, split: str) -> HFTable | None:
    if not base.is_dir():
        return None
    files = sorted({*base.glob("*.parquet"), *base.glob("*/*.parquet")})
    if not files:
        return None
    chosen = [f for f in files if split in _split_names(f)]
    if not chosen:
        found = sorted({_SHARDED.match(f.stem)["split"] if _SHARDED.match(f.stem) else f.stem for f in files})
        raise DataFormatError(
            f"no parquet file for split {split!r} under {base} (found: {', '.join(found)}); "
            f"name them {split}-00000-of-00001.parquet as on the Hub"
        )
    return _parquet_table(chosen, f"parquet {chosen[0].parent}/{split}*.parquet")


class _ParquetCells:
    """Image cells of parquet files, read one row group of one column at a time."""

    def __init__(self, files: list):
        self._files = files  # pyarrow.parquet.ParquetFile objects
        self._groups: list[tuple[int, int, int]] = []  # (first row, file, row group)
        start = 0
        for f, handle in enumerate(files):
            for g in range(handle.num_row_groups):
                self._groups.append((start, f, g))
                start += handle.metadata.row_group(g).num_rows
        self._firsts = [first for first, _, _ in self._groups]
        self._cached_key: tuple | None = None
        self._cached = None

    def __call__(self, index: int, column: str) -> Any:
        import bisect

        first, f, g = self._groups[bisect.bisect_right(self._firsts, index) - 1]
        if self._cached_key != (f, g, column):
            self._cached = self._files[f].read_row_group(g, columns=[column]).column(0)
            self._cached_key = (f, g, column)
        return self._cached[index - first].as_py()


def _parquet_table(files: list[Path], description: str) -> HFTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    handles = []
    for file in files:
        try:
            handles.append(pq.ParquetFile(file, memory_map=True))
        except (pa.ArrowInvalid, OSError) as error:
            raise DataFormatError(f"{file} is not a readable parquet file: {str(error).splitlines()[0]}") from None
    schema = handles[0].schema_arrow
    for file, handle in zip(files[1:], handles[1:]):
        if handle.schema_arrow.names != schema.names:
            raise DataFormatError(f"parquet files {files[0].name} and {file.name} have different columns")
    images = [f.name for f in schema if _is_image_type(f.type)]
    plain = [name for name in schema.names if name not in images]
    try:
        tables = [handle.read(columns=plain) for handle in handles]
        table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    except (pa.ArrowInvalid, OSError) as error:
        raise DataFormatError(f"cannot read the parquet files of {description}: {str(error).splitlines()[0]}") from None
    return HFTable(table, description, files[0].parent, image_columns=images, cells=_ParquetCells(handles))


__all__ = ["HFTable", "decode_image_cell", "find_hf_table"]
