"""data=csv: image paths and labels listed in CSV files (one per split), and the label coding it shares with the
other table-like sources (data=hf, data=webdataset)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tl_cli.data.datasets import SPLIT_ALIASES, FileImages, RawSplits, check_classes_readable, register_dataset
from tl_cli.data.images import first_few
from tl_cli.errors import TlcliError

SPLITS = tuple(SPLIT_ALIASES)  # train, val, test: the data.<split> keys


def label_classes(values: Sequence[str], where: str) -> list[str]:
    """Class names of a split's label values: integers sort as numbers, names as text."""
    unique = sorted(set(values))
    if len(unique) < 2:
        raise TlcliError(f"{where} has {len(unique)} distinct label(s) ({first_few(unique)}); need at least 2 classes")
    try:
        return [str(v) for v in sorted(int(v) for v in unique)]
    except ValueError:
        return unique


def encode_labels(values: Sequence[str], classes: list[str], where: str) -> np.ndarray:
    """Class indices of label values; a label no class has is an error naming it (an unknown label in val or
    test would otherwise be scored against a class the model never learned)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({v for v in values if v not in index})
    if unknown:
        raise TlcliError(
            f"{where} has {len(unknown)} label(s) that train does not have ({first_few(unknown)}); "
            f"train's classes are {first_few(classes, len(classes))}"
        )
    return np.array([index[v] for v in values], dtype=np.int64)


def normalized_label(value: object) -> str:
    """A label as text; '3', ' 3' and '3.0' are the same integer class."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


@register_dataset("csv")
def csv_source(cfg, seed: int) -> RawSplits:
    """data.train / data.val / data.test CSV files of image paths and labels; missing val/test are held out."""
    if not cfg.train:
        raise TlcliError("data=csv needs data.train=<train.csv> (columns path,label; data.val and data.test optional)")
    root = Path(cfg.root).expanduser() if cfg.root else None
    rows = {split: read_rows(cfg, split, root) for split in SPLITS if cfg[split]}
    classes = label_classes([label for _, label in rows["train"]], f"data.train={cfg.train}")
    splits = RawSplits(classes=classes)
    for split, pairs in rows.items():
        where = f"data.{split}={cfg[split]}"
        labels = encode_labels([label for _, label in pairs], classes, where)
        files = FileImages(cfg[split], [(path, int(y)) for (path, _), y in zip(pairs, labels, strict=True)])
        check_classes_readable(files, cfg[split], classes)
        splits.add(split, files, labels)
    return splits


def read_rows(cfg, split: str, root: Path | None) -> list[tuple[str, str]]:
    """(image path, label) rows of data.<split>'s CSV; paths resolved against data.root (else the CSV's folder)
    and checked to exist."""
    table = Path(cfg[split]).expanduser()
    if not table.is_file() and root is not None and (root / table).is_file():
        table = root / table
    if not table.is_file():
        raise TlcliError(f"data.{split}={cfg[split]} is not a file; pass a CSV with columns path,label")
    columns = (cfg.path_column, cfg.label_column)
    with open(table, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheets write a BOM
        reader = csv.DictReader(f)
        found = list(reader.fieldnames or [])
        missing = [c for c in columns if c not in found]
        if missing:
            raise TlcliError(
                f"data.{split}={cfg[split]} has no column '{missing[0]}' (columns: {', '.join(found)}); "
                f"name the columns with data.path_column=... data.label_column=..."
            )
        rows = [(row[columns[0]] or "", normalized_label(row[columns[1]] or "")) for row in reader]
    if not rows:
        raise TlcliError(f"data.{split}={cfg[split]} lists no images; add rows of path,label")
    base = root or table.parent
    rows = [(str(base / path) if not Path(path).is_absolute() else path, label) for path, label in rows]
    missing_files = [path for path, _ in rows if not Path(path).is_file()]
    if missing_files:
        raise TlcliError(
            f"data.{split}={cfg[split]}: {len(missing_files)} of {len(rows)} listed files do not exist "
            f"({first_few(missing_files)}); fix the paths (relative ones are under {base})"
        )
    return rows
