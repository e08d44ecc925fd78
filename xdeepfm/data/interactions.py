"""Any interaction log as ranking data, from a config only (``data: {kind: interactions, ...}``).

An interaction table (CSV or Parquet; one file or a glob), optionally joined with an item table
and a user table by key, becomes one row per interaction with a ``label``::

    data:
      kind: interactions
      root: datasets/ml-latest-small          # table paths are relative to it
      interactions: {path: ratings.csv, rename: {userId: user_id, movieId: item_id}}
      items:
        path: movies.csv
        key: item_id                          # joined on this column (after rename), in both tables
        rename: {movieId: item_id}
        derive:
          - {name: release_year, source: title, regex: '\\((\\d{4})\\)\\s*$', dtype: float, fill: median}
          - {name: title, source: title, replace: '\\s*\\(\\d{4}\\)\\s*$'}
          - {name: genres, source: genres, split: "|"}
      label: {column: rating, at_least: 4}    # or {column: click}: a 0/1 column as-is
      split: temporal                         # random | cold_item | cold_user | temporal (+ options)

Each table is read, then its columns renamed (``rename``), then its ``derive`` transforms run in
order (each adds or replaces column ``name`` from column ``source``, or from the 0/1 ``flags``
columns), then the tables are joined (every interaction must find its item / user: ``how=left``
with a check), the label made, ``user`` renamed to ``user_id`` (what the trainer and the metrics
group by) and the ``keep`` columns kept. Transforms (exactly one per entry):

- ``regex``: capture group 1 of a regular expression (no match: missing), e.g. the year of a title;
- ``replace`` (+ ``by``, default ''): a regular expression replaced, e.g. the title without its year;
- ``split``: split on a separator, pieces stripped, empty ones dropped, re-joined with ``join``
  (default the same separator): the value of a ``multi_valued`` feature field;
- ``bins`` (+ ``labels``): bucketing of a numeric column into ``len(bins) + 1`` buckets
  ``[-inf, b0), [b0, b1), ..., [b_last, inf)`` (``right: true`` closes on the right instead);
- ``time_part``: hour / weekday (0 = Monday) / day / month / year of a time column, numeric
  (``time_unit``: s or ms since the epoch) or text (``time_format``, e.g. ``%d-%b-%Y``);
- ``flags``: the names of the 0/1 columns ``flags`` that are 1, joined with ``join`` (default ``|``).

Then, on the result: ``case`` (upper / lower), ``fill_from`` (another column where missing),
``fill`` (a value, or ``median`` of the table's column) and ``dtype`` (str / int / float).

Errors name the file, the column, the row and its line, and what was expected:
``ratings.csv:5: column 'rating': row 3 is 'x'; expected a number``.
"""

from __future__ import annotations

import csv
import glob
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mmcore.config import ConfigError, check_range
from xdeepfm.data.movielens import DataFileError
from xdeepfm.data.splits import SplitOptions, split_by

log = logging.getLogger(__name__)

TIME_PARTS = ("hour", "weekday", "day", "month", "year")
OPERATIONS = ("regex", "replace", "split", "bins", "time_part", "flags")


@dataclass
class DeriveConfig:
    """One derived column (see the module docstring for the transforms)."""

    name: str  # the column written (a new one, or ``source`` replaced)
    source: str | None = None  # the column read (all transforms but ``flags``)
    regex: str | None = None  # capture group 1
    replace: str | None = None  # a regex replaced by ``by``
    by: str = ""
    split: str | None = None  # separator; re-joined with ``join``
    join: str | None = None  # split / flags: the separator of the result (split: ``split``; flags: "|")
    bins: list[float] | None = None  # bucket edges, increasing
    labels: list[str] | None = None  # bins: len(bins) + 1 bucket names (default the intervals)
    right: bool = False  # bins: buckets closed on the right
    time_part: Literal["hour", "weekday", "day", "month", "year"] | None = None
    time_unit: Literal["s", "ms"] = "s"  # time_part of a numeric column
    time_format: str | None = None  # time_part of a text column (strftime codes); None: pandas infers
    flags: list[str] | None = None  # 0/1 columns, named in the result when 1
    strip: bool = True  # regex / replace: strip spaces from the result
    case: Literal["upper", "lower"] | None = None
    fill_from: str | None = None  # where the result is missing: this column's value
    fill: str | float | None = None  # then: this value, or "median" (of the result, over the table)
    dtype: Literal["str", "int", "float"] | None = None

    def __post_init__(self) -> None:
        used = [op for op in OPERATIONS if getattr(self, op) is not None]
        if len(used) != 1:
            raise ConfigError(f"derive {self.name!r}: expected exactly one of {list(OPERATIONS)}, got {used or 'none'}")
        if used[0] != "flags" and self.source is None:
            raise ConfigError(f"derive {self.name!r}: {used[0]} needs a source column (source: ...)")
        for key in ("regex", "replace"):
            pattern = getattr(self, key)
            if pattern is not None:
                try:
                    compiled = re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(f"derive {self.name!r}: {key} {pattern!r} is not a regular expression ({exc})") from None
                if key == "regex" and compiled.groups < 1:
                    raise ConfigError(f"derive {self.name!r}: regex {pattern!r} has no capture group ( ... )")
        if self.split == "":
            raise ConfigError(f"derive {self.name!r}: split: expected a non-empty separator")
        if self.bins is not None:
            if not self.bins or any(b >= a for a, b in zip(self.bins[1:], self.bins)):
                raise ConfigError(f"derive {self.name!r}: bins {self.bins}: expected strictly increasing edges")
            if self.labels is not None and len(self.labels) != len(self.bins) + 1:
                raise ConfigError(f"derive {self.name!r}: labels: expected {len(self.bins) + 1} names for "
                                  f"{len(self.bins)} edges, got {len(self.labels)}")
        if isinstance(self.fill, str) and self.fill != "median" and self.dtype in ("int", "float"):
            raise ConfigError(f"derive {self.name!r}: fill {self.fill!r}: expected a number or 'median' for dtype {self.dtype}")


@dataclass
class TableConfig:
    """One table: where it is, how to read it, what to rename and derive."""

    path: str  # a file or a glob (relative to ``root``); .parquet / .pq: Parquet, else CSV
    key: str | None = None  # items / users: the join column (after rename), in this table and the interactions
    sep: str = ","  # CSV separator
    names: list[str] | None = None  # CSV without a header line: the column names
    encoding: str = "utf-8"
    quoting: bool = True  # CSV: '"' quotes fields; false reads quotes as text
    na: list[str] | None = None  # CSV: the strings read as missing (None: pandas' list; []: none, '' stays '')
    dtypes: dict[str, Literal["str", "int", "float"]] = field(default_factory=dict)  # column types as read
    rename: dict[str, str] = field(default_factory=dict)  # old name -> new name
    derive: list[DeriveConfig] = field(default_factory=list)


@dataclass
class LabelConfig:
    """The label: column ``column`` as-is (0/1, or a probability in [0, 1]), or 1 where it is >= ``at_least``."""

    column: str
    at_least: float | None = None


@dataclass
class InteractionsConfig(SplitOptions):
    """A generic interaction log (``data: {kind: interactions}``; the split keys: ``xdeepfm.data.splits``)."""

    kind: Literal["interactions"]  # required: tells this section apart from the other data kinds
    interactions: TableConfig
    label: LabelConfig
    root: str = "."  # table paths are relative to it
    items: TableConfig | None = None  # joined on items.key
    users: TableConfig | None = None  # joined on users.key
    user: str = "user_id"  # the user column (after rename); written as user_id
    item: str = "item_id"  # the item column: cold_item splits on it
    time: str = "timestamp"  # the time column: temporal splits on it
    keep: list[str] | None = None  # the columns of the result, in order (None: all, label last)
    split: Literal["random", "cold_item", "cold_user", "temporal"] = "random"
    max_rows: int | None = None  # keep a seeded random subset of interactions (tests, quick runs)

    def check(self) -> None:
        """Refuse values that make no sense (``RankingExperiment`` calls it for its ``data`` section)."""
        check_range("data.max_rows", self.max_rows, low=1)
        self.check_split()
        for name, table in (("items", self.items), ("users", self.users)):
            if table is not None and table.key is None:
                raise ConfigError(f"data.{name}.key: required to join the {name} table (the column in both tables)")


# ---------------------------------------------------------------------------------------- reading


@dataclass
class Table:
    """A table as read, with what is needed to say where a row came from."""

    frame: pd.DataFrame
    what: str  # data.interactions / data.items / data.users
    files: list[Path]
    starts: np.ndarray  # first global row of each file
    csv: bool
    header: bool
    encoding: str
    sep: str

    def where(self, row: int) -> str:
        """``file:line`` of global row ``row`` (CSV), or ``file row N`` (Parquet)."""
        index = int(np.searchsorted(self.starts, row, side="right")) - 1
        path, local = self.files[index], row - int(self.starts[index])
        if not self.csv:
            return f"{path} row {local}"
        return f"{path}:{_line_of_row(path, local, self.header, self.encoding, self.sep)}"

    def refuse(self, column: str, bad: np.ndarray, expected: str, values: pd.Series | None = None) -> None:
        """A DataFileError at the first ``bad`` row, naming file, line, column, row and value."""
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = (self.frame[column] if values is None else values).iloc[row]
            value = value.item() if isinstance(value, np.generic) else value  # 99, not np.int64(99)
            raise DataFileError(f"{self.where(row)}: column {column!r}: row {row} is {value!r}; expected {expected}")

    def require(self, columns: list[str], why: str) -> None:
        missing = [c for c in columns if c not in self.frame.columns]
        if missing:
            raise DataFileError(f"{self.files[0]}: column {missing[0]!r} not found ({why}); "
                                f"the {self.what} table has {list(self.frame.columns)}")


def _line_of_row(path: Path, row: int, header: bool, encoding: str, sep: str) -> int:
    """The line on which data row ``row`` (0-based) starts, counting quoted newlines and skipping
    blank lines as ``pandas.read_csv`` does."""
    with open(path, newline="", encoding=encoding, errors="replace") as handle:
        reader = csv.reader(handle, delimiter=sep if len(sep) == 1 else ",")
        start, seen = 1, -1 if header else 0
        for record in reader:
            if record:
                if seen == row:
                    return start
                seen += 1
            start = reader.line_num + 1
    return start


def _files(root: Path, pattern: str, what: str) -> list[Path]:
    path = root / pattern
    if glob.has_magic(str(path)):
        files = sorted(Path(p) for p in glob.glob(str(path)))
        if not files:
            raise FileNotFoundError(f"{what}.path: no file matches {str(path)!r}")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found ({what}.path {pattern!r}, root {str(root)!r})")
    return [path]


def _read_file(path: Path, table: TableConfig) -> pd.DataFrame:
    if path.suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise DataFileError(f"{path}: not a readable Parquet file ({exc})") from None
    options: dict = {"sep": table.sep, "encoding": table.encoding,
                     "dtype": {c: str for c, t in table.dtypes.items() if t == "str"},
                     "quoting": csv.QUOTE_MINIMAL if table.quoting else csv.QUOTE_NONE}
    if table.names is not None:
        options.update(header=None, names=table.names)
    if table.na is not None:
        options.update(keep_default_na=False, na_values=table.na)
    try:
        frame = pd.read_csv(path, **options)
    except pd.errors.EmptyDataError:
        raise DataFileError(f"{path}: the file is empty; expected a header line and one row per line") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes().count(b"\n", 0, exc.start) + 1
        raise DataFileError(f"{path}:{line}: not {table.encoding} text ({exc.reason})") from None
    except (pd.errors.ParserError, ValueError) as exc:  # ragged rows, a bad quote
        raise DataFileError(f"{path}: not a readable CSV file ({str(exc).strip().splitlines()[0]})") from None
    if table.names is not None and len(frame.columns) != len(table.names):
        raise DataFileError(f"{path}: expected {len(table.names)} columns ({', '.join(table.names)})")
    return frame


def read_table(root: Path, table: TableConfig, what: str) -> Table:
    """Read every file of ``table`` (same columns in each), typed, renamed and derived."""
    files = _files(root, table.path, what)
    frames = [_read_file(path, table) for path in files]
    for path, frame in zip(files[1:], frames[1:]):
        if list(frame.columns) != list(frames[0].columns):
            raise DataFileError(f"{path}: columns {list(frame.columns)} differ from {files[0]}'s {list(frames[0].columns)}")
    starts = np.cumsum([0] + [len(f) for f in frames[:-1]])
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    result = Table(frame, what, files, starts, csv=files[0].suffix not in (".parquet", ".pq"),
                   header=table.names is None, encoding=table.encoding, sep=table.sep)
    result.require(list(table.dtypes), f"{what}.dtypes")
    for column, kind in table.dtypes.items():
        result.frame[column] = _cast(result, column, result.frame[column], kind)
    result.require(list(table.rename), f"{what}.rename")
    result.frame = result.frame.rename(columns=table.rename)
    for derive in table.derive:
        result.frame[derive.name] = derived(result, derive)
    return result


def _cast(table: Table, column: str, values: pd.Series, kind: str) -> pd.Series:
    """``values`` as str / int (int64) / float (float64); a value that is not one is refused with its row."""
    if kind == "str":  # whole numbers without ".0" (an hour 18.0 is "18"); missing stays missing
        def text(value):
            if pd.isna(value):
                return None
            return str(int(value)) if isinstance(value, (float, np.floating)) and float(value).is_integer() else str(value)
        return values.map(text).astype(str).where(values.notna(), None)
    numbers = pd.to_numeric(values, errors="coerce")
    table.refuse(column, (numbers.isna() & values.notna()).to_numpy(), "a number", values)
    if kind == "float":
        return numbers.astype(np.float64)
    integral = numbers.notna() & (numbers != np.floor(numbers.fillna(0)))
    table.refuse(column, integral.to_numpy() | numbers.isna().to_numpy(), "an integer", values)
    return numbers.astype(np.int64)


# --------------------------------------------------------------------------------------- derive


def _text(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), "").astype(str)


def _time_part(table: Table, derive: DeriveConfig, values: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        stamps = pd.to_datetime(values, unit=derive.time_unit)
    else:
        present = values.notna() & (_text(values).str.strip() != "")
        stamps = pd.to_datetime(values.where(present), format=derive.time_format, errors="coerce")
        table.refuse(derive.source, (stamps.isna() & present).to_numpy(),
                     f"a time like {derive.time_format!r}" if derive.time_format else "a date/time", values)
    part = {"hour": stamps.dt.hour, "weekday": stamps.dt.weekday, "day": stamps.dt.day,
            "month": stamps.dt.month, "year": stamps.dt.year}[derive.time_part]
    return part.astype(np.float64)


def derived(table: Table, derive: DeriveConfig) -> pd.Series:
    """The column ``derive`` makes from ``table`` (the transforms of the module docstring)."""
    frame = table.frame
    why = f"{table.what}.derive {derive.name!r}"
    table.require([c for c in (derive.source, derive.fill_from) if c is not None] + list(derive.flags or []), why)
    values = frame[derive.source] if derive.source is not None else None
    if derive.flags is not None:
        for column in derive.flags:
            table.refuse(column, ~frame[column].isin([0, 1, "0", "1"]).to_numpy(), "0 or 1")
        flags = frame[derive.flags].astype(int).to_numpy(bool)
        names = np.array(derive.flags, dtype=object)
        result = pd.Series([(derive.join or "|").join(names[row]) for row in flags], index=frame.index, dtype=str)
    elif derive.regex is not None:
        result = _text(values).str.extract(derive.regex, expand=False)
        result = result.iloc[:, 0] if isinstance(result, pd.DataFrame) else result
        result = result.str.strip() if derive.strip else result
    elif derive.replace is not None:
        result = _text(values).str.replace(derive.replace, derive.by, regex=True)
        result = result.str.strip() if derive.strip else result
    elif derive.split is not None:
        join = derive.join if derive.join is not None else derive.split
        result = _text(values).map(lambda text: join.join(p.strip() for p in text.split(derive.split) if p.strip()))
    elif derive.bins is not None:
        numbers = pd.to_numeric(values, errors="coerce")
        table.refuse(derive.source, (numbers.isna() & values.notna()).to_numpy(), "a number", values)
        edges = [-np.inf, *derive.bins, np.inf]
        result = pd.cut(numbers, bins=edges, right=derive.right, labels=derive.labels).astype(str)
    else:
        result = _time_part(table, derive, values)
    if derive.case is not None:
        result = result.str.upper() if derive.case == "upper" else result.str.lower()
    if derive.fill_from is not None:
        result = result.fillna(frame[derive.fill_from])
    if derive.fill is not None and result.isna().any():
        if derive.fill == "median":
            fill = float(pd.to_numeric(result, errors="coerce").median())
            log.info("%s: %d rows have no value; using the median %s", why, int(result.isna().sum()), fill)
        else:
            fill = derive.fill
        result = result.fillna(fill)
    if derive.dtype is not None:
        result = _cast(table, derive.name, result, derive.dtype)
    return result


# ------------------------------------------------------------------------------------ the frame


def _join(left: Table, right: Table, key: str) -> pd.DataFrame:
    """``left`` with ``right``'s columns by ``key``; every left row must find exactly one right row."""
    left.require([key], f"{right.what}.key")
    right.require([key], f"{right.what}.key")
    duplicated = right.frame[key].duplicated().to_numpy()
    right.refuse(key, duplicated, f"a unique {key} (the {right.what} table is joined on it)")
    unknown = ~left.frame[key].isin(right.frame[key]).to_numpy()
    left.refuse(key, unknown, f"a {key} of {right.files[0]} ({len(right.frame)} rows)")
    columns = [c for c in right.frame.columns if c != key and c not in left.frame.columns]
    return left.frame.merge(right.frame[[key, *columns]], on=key, how="left", validate="many_to_one")


def _label(table: Table, rule: LabelConfig) -> pd.Series:
    table.require([rule.column], "data.label.column")
    values = table.frame[rule.column]
    numbers = pd.to_numeric(values, errors="coerce")
    if rule.at_least is not None:
        table.refuse(rule.column, numbers.isna().to_numpy(), "a number (the label is rating >= "
                     f"{rule.at_least:g})", values)
        return (numbers >= rule.at_least).astype(np.float32)
    table.refuse(rule.column, ~numbers.between(0, 1).to_numpy(), "a label in [0, 1] (0/1 clicks)", values)
    return numbers.astype(np.float32)


def load_interactions(config: InteractionsConfig) -> pd.DataFrame:
    """One row per interaction: the joined, derived, labelled frame (see the module docstring)."""
    config.check()
    root = Path(config.root)
    table = read_table(root, config.interactions, "data.interactions")
    frame = table.frame
    for name, spec in (("users", config.users), ("items", config.items)):
        if spec is not None:
            frame = _join(table, read_table(root, spec, f"data.{name}"), spec.key)
            table.frame = frame  # rows stay in the interactions' order: where() still names their lines
    table.require([config.user], "data.user")
    table.frame = frame = frame.assign(label=_label(table, config.label))
    if config.user != "user_id":
        if "user_id" in frame.columns:
            raise ConfigError(f"data.user {config.user!r}: the table also has a column 'user_id'; rename one of them")
        frame = frame.rename(columns={config.user: "user_id"})
    if config.keep is not None:
        missing = [c for c in config.keep if c not in frame.columns]
        if missing:
            raise ConfigError(f"data.keep: column {missing[0]!r} is not in the joined table ({list(frame.columns)})")
        frame = frame[list(config.keep)]
    if config.max_rows is not None and config.max_rows < len(frame):
        frame = frame.sample(n=config.max_rows, random_state=config.split_seed)
    return frame.reset_index(drop=True)


def load_interaction_splits(config: InteractionsConfig) -> dict[str, pd.DataFrame]:
    """The interactions split as ``config.split`` says (``xdeepfm.data.splits``)."""
    frame = load_interactions(config)
    user = "user_id"
    for role, column in (("item", config.item), ("time", config.time)):
        needed = (role == "item" and config.split == "cold_item") or (role == "time" and config.split == "temporal")
        if needed and column not in frame.columns:
            raise ConfigError(f"data.{role} {column!r}: split {config.split} needs it, but the table has {list(frame.columns)}")
    return split_by(frame, config, config.split, f"interactions {config.interactions.path}", item_column=config.item,
                    user_column=user, time_column=config.time)
