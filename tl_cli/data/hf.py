"""data=hf: a Hugging Face `datasets` dataset (a Hub id from the local cache, a save_to_disk folder, or a folder of
parquet files), read through the `datasets` library. Needs the `hf` extra."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from tl_cli.data.datasets import SPLIT_ALIASES, DecodedImages, RawSplits, check_classes_readable, register_dataset
from tl_cli.data.tables import encode_labels, label_classes, normalized_label
from tl_cli.errors import TlcliError
from tl_cli.extras import HF, require

log = logging.getLogger(__name__)

USAGE = "data.dataset=<Hub id, save_to_disk folder or folder of parquet files>"


class RowNames:
    """'<dataset>[<split>] row <i>' for each row: how messages name a sample of a table (no list of n strings)."""

    def __init__(self, prefix: str, count: int) -> None:
        self.prefix, self.count = prefix, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[str]:
        return (f"{self.prefix} row {index}",)


class HfImages(DecodedImages):
    """One split's image column, kept undecoded (bytes or a path per row) and decoded by PIL when served, so a
    corrupt row is counted and skipped like a corrupt file. Rows are read from the Arrow column itself: ten times
    faster per row than `datasets`' formatted row access, which decodes every column."""

    def __init__(self, table, image_column: str, labels: np.ndarray, name: str) -> None:
        if table._indices is not None:  # a select()/shuffle() view: its rows in order, as a plain table
            table = table.flatten_indices()
        self.column = table.data.column(image_column)  # pyarrow ChunkedArray of {bytes, path} structs
        super().__init__(name, RowNames(name, len(labels)), labels)

    def _open(self, index: int) -> Image.Image:
        cell = self.column[int(index)]
        data = cell["bytes"].as_py()
        return Image.open(io.BytesIO(data)) if data is not None else Image.open(cell["path"].as_py())


def load(spec: str):
    """A DatasetDict (or Dataset) from a save_to_disk folder, a folder of parquet files, or a Hub id."""
    import datasets

    datasets.disable_progress_bars()  # tlcli logs what it loads; bars would fill a log file
    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                return datasets.load_from_disk(str(path))
            if next(path.rglob("*.parquet"), None) is not None:
                return datasets.load_dataset("parquet", data_dir=str(path))
            raise TlcliError(
                f"data.dataset={spec} is a folder with neither a save_to_disk dataset nor parquet files; {USAGE}"
            )
        return datasets.load_dataset(spec)
    except TlcliError:
        raise
    except Exception as ex:  # offline misses, unknown ids, bad files: `datasets` raises many types
        first = " ".join(str(ex).split())[:200]
        raise TlcliError(
            f"data.dataset={spec} could not be loaded ({type(ex).__name__}: {first}); offline, a Hub id must be in "
            f"the local Hugging Face cache (HF_HOME): download it once online, or pass a save_to_disk or parquet folder"
        ) from None


def find_column(features: dict, wanted: str, default: str, kind: type, key: str) -> str:
    """`wanted` when the table has it; when it is the default name, else the table's one column of feature type
    `kind`; otherwise an error (a name the user gave is never replaced by a guess)."""
    if wanted in features:
        return wanted
    matches = [name for name, feature in features.items() if isinstance(feature, kind)]
    if wanted == default and len(matches) == 1:
        return matches[0]
    raise TlcliError(f"{key}={wanted} is not a column (columns: {', '.join(features)}); set {key} to one of them")


def split_tables(loaded) -> dict[str, object]:
    """The train/val/test tables by name (train, validation, test, ... aliases); other splits are logged."""
    from datasets import DatasetDict

    tables = dict(loaded) if isinstance(loaded, DatasetDict) else {"train": loaded}
    found = {}
    for split, aliases in SPLIT_ALIASES.items():
        name = next((a for a in aliases if a in tables), None)
        if name is not None:
            found[split] = tables[name]
    unused = sorted(set(tables) - {a for aliases in SPLIT_ALIASES.values() for a in aliases})
    if unused:
        log.info("data=hf: not using split(s) %s", ", ".join(unused))
    if "train" not in found:
        raise TlcliError(f"the dataset has no train split (splits: {', '.join(tables)}); name one 'train'")
    return found


@register_dataset("hf")
def hf_source(cfg, seed: int) -> RawSplits:
    """Splits by name (a missing val/test is held out of train); classes from the label column's ClassLabel."""
    require(HF)
    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    if not cfg.dataset:
        raise TlcliError(f"data=hf needs {USAGE}")
    tables = split_tables(load(str(cfg.dataset)))
    features = tables["train"].features
    image_column = find_column(features, cfg.image_column, "image", ImageFeature, "data.image_column")
    label_column = find_column(features, cfg.label_column, "label", ClassLabel, "data.label_column")
    label_feature = features[label_column]
    if isinstance(label_feature, ClassLabel):
        classes = list(label_feature.names)
    else:
        classes = label_classes([normalized_label(v) for v in tables["train"][label_column]], "data=hf train")
    splits = RawSplits(classes=classes)
    for split, table in tables.items():
        where = f"data.dataset={cfg.dataset} [{split}]"
        if len(table) == 0:
            raise TlcliError(f"{where} is empty; remove the split or add rows")
        for column in (image_column, label_column):
            if column not in table.features:
                raise TlcliError(f"{where} has no column '{column}' (columns: {', '.join(table.features)})")
        labels = _labels(table, label_column, label_feature, classes, where)
        images = HfImages(table, image_column, labels, where)
        check_classes_readable(images, where, classes)
        splits.add(split, images, labels)
    return splits


def _labels(table, column: str, train_feature, classes: list[str], where: str) -> np.ndarray:
    """Class indices of a split: ClassLabel ints mapped by name (splits may order names differently)."""
    from datasets import ClassLabel

    values = table[column]
    feature = table.features[column]
    if isinstance(train_feature, ClassLabel) and isinstance(feature, ClassLabel):
        names = [feature.int2str(int(v)) for v in values] if feature.names != classes else None
        if names is None:
            return np.asarray(values, dtype=np.int64)
        return encode_labels(names, classes, where)
    return encode_labels([normalized_label(v) for v in values], classes, where)
