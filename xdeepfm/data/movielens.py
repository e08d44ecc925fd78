"""MovieLens-100K (GroupLens) as a click-through table, and the two evaluation splits.

``load_movielens_100k(root)`` joins u.data with u.user and u.item into one row per rating:

=============  =====================================================================
user_id        u.data user id (categorical)
item_id        u.data item id (categorical)
gender         M / F
age            years (numeric) ; age_bucket: MovieLens-1M style bucket (categorical)
occupation     u.user occupation (categorical)
zip_prefix     first ``zip_prefix_len`` characters of the zip code (categorical)
genres         genre names joined with ``genre_sep`` (multi-valued), from the 19 flags
title          the title with the trailing "(1995)" year stripped (text)
release_year   year from the title, else from the release date, else the catalogue median
label          1 when rating >= ``like_threshold`` (4), else 0
=============  =====================================================================

Splits (``xdeepfm.data.splits``, ``split:`` and its options): ``random`` 80/10/10 (seeded),
``cold_item`` / ``cold_user`` (10% of the items / users with all their rows as test) and
``temporal`` (per user, the last ``leave_last`` = 10 ratings by time to test, the 10 before them
to valid: 9,430 test rows; or a global ``time_cut`` / ``time_quantiles``).

Every file is read in one validating pass (``read_ratings``, ``read_users``, ``read_genres``,
``read_items``): a line that does not hold what the GroupLens layout says is refused with a
:class:`DataFileError` naming the file, the line, the field and what was expected, e.g.
``.../u.data:17: rating 'x': expected an integer 1..5``. Blank lines are skipped (line numbers stay
those of the file) and ``\r\n`` line ends are accepted; u.data and u.user are UTF-8, u.item Latin-1.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from mmcore.config import ConfigError, check_range
from xdeepfm.data.splits import SplitOptions, split_by, split_frame  # noqa: F401 - split_frame re-exported (older imports)

log = logging.getLogger(__name__)

AGE_BUCKETS = (18, 25, 35, 45, 50, 56)  # MovieLens-1M: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+
AGE_LABELS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")


@dataclass
class MovieLensConfig(SplitOptions):
    """Where ML-100K lives and how it is framed and split (the split keys: ``xdeepfm.data.splits``)."""

    root: str | None = None  # None → datasets/ml-100k, else the project's shared copy (../shared/data/ml-100k)
    split: Literal["random", "cold_item", "cold_user", "temporal"] = "random"  # temporal: leave_last 10 per user
    like_threshold: int = 4
    zip_prefix_len: int = 2
    genre_sep: str = "|"
    max_rows: int | None = None  # keep a seeded random subset of ratings (tests, quick runs)

    def check(self) -> None:
        """Refuse values that make no sense (``RankingExperiment`` calls it for its ``data`` section)."""
        check_range("data.like_threshold", self.like_threshold, low=1, high=5)
        check_range("data.zip_prefix_len", self.zip_prefix_len, low=0)
        check_range("data.max_rows", self.max_rows, low=1)
        self.check_split()
        if not self.genre_sep:
            raise ConfigError("data.genre_sep='': expected a non-empty separator")


class DataFileError(ValueError):
    """A data file does not hold what it should; the message is one line naming the file, the line
    (when one line is at fault), the field and what was expected."""


REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_CANDIDATES = (REPO_ROOT / "datasets" / "ml-100k", REPO_ROOT.parent / "shared" / "data" / "ml-100k")


def default_root() -> Path:
    """``datasets/ml-100k`` when present, else ``../shared/data/ml-100k`` beside the checkout."""
    for candidate in ROOT_CANDIDATES:
        if (candidate / "u.data").is_file():
            return candidate
    raise FileNotFoundError(
        f"MovieLens-100K not found in {' or '.join(map(str, ROOT_CANDIDATES))}: "
        "unpack ml-100k.zip from GroupLens into datasets/ml-100k (see datasets/README.md)"
    )


RATING_FIELDS = ("user_id", "item_id", "rating", "timestamp")
USER_FIELDS = ("user_id", "age", "gender", "occupation", "zip")
ITEM_FIELDS = ("item_id", "title", "release_date", "video_release_date", "imdb_url")
MAX_AGE = 120
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
RELEASE_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})")  # 01-Jan-1995, 4-Feb-1971


def _lines(path: Path, encoding: str, what: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line of ``path`` (1-based numbers of the file,
    a trailing ``\r`` removed); a missing, undecodable or empty file is refused."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MovieLens-100K file not found (expected the GroupLens ml-100k layout)")
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFileError(f"{path}:{line}: not {encoding.upper()} text ({exc.reason}: byte "
                            f"{data[exc.start:exc.start + 1]!r})") from None
    lines = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if line.strip(" \t\r"):
            lines.append((number, line))
    if not lines:
        raise DataFileError(f"{path}: the file is empty; expected one {what} per line")
    return lines


def _fields(path: Path, number: int, line: str, sep: str, names: tuple[str, ...] | str, count: int) -> list[str]:
    fields = line.split(sep)
    if len(fields) != count:
        described = names if isinstance(names, str) else ", ".join(names)
        kind = "tab" if sep == "\t" else repr(sep)
        raise DataFileError(f"{path}:{number}: expected {count} {kind}-separated fields ({described}), found {len(fields)}")
    return fields


def _integer(path: Path, number: int, field: str, text: str, low: int, high: int | None, expected: str) -> int:
    """``text`` as an int in [low, high] (ASCII digits only, int64), else a DataFileError naming the line."""
    if text.isascii() and text.isdigit() and len(text) <= 18:
        value = int(text)
        if value >= low and (high is None or value <= high):
            return value
    raise DataFileError(f"{path}:{number}: {field} {text!r}: expected {expected}")


def _first_seen(path: Path, number: int, field: str, value, seen: dict) -> None:
    if value in seen:
        raise DataFileError(f"{path}:{number}: {field} {value!r}: duplicate (first on line {seen[value]})")
    seen[value] = number


def read_ratings(path: str | Path, user_ids: set[int] | None = None, item_ids: set[int] | None = None) -> pd.DataFrame:
    """u.data (``user_id``, ``item_id``, ``rating`` 1..5, ``timestamp``; tab-separated) as int64
    columns; with ``user_ids``/``item_ids`` every rating's ids must be among them."""
    path = Path(path)
    columns: tuple[list[int], ...] = ([], [], [], [])
    users, items, ratings, stamps = columns
    for number, line in _lines(path, "utf-8", "rating"):
        user, item, rating, stamp = _fields(path, number, line, "\t", RATING_FIELDS, 4)
        users.append(_integer(path, number, "user_id", user, 1, None, "a positive integer"))
        items.append(_integer(path, number, "item_id", item, 1, None, "a positive integer"))
        ratings.append(_integer(path, number, "rating", rating, 1, 5, "an integer 1..5"))
        stamps.append(_integer(path, number, "timestamp", stamp, 0, None, "a non-negative integer"))
        if user_ids is not None and users[-1] not in user_ids:
            raise DataFileError(f"{path}:{number}: user_id {users[-1]}: not in u.user ({len(user_ids)} users)")
        if item_ids is not None and items[-1] not in item_ids:
            raise DataFileError(f"{path}:{number}: item_id {items[-1]}: not in u.item ({len(item_ids)} items)")
    return pd.DataFrame({name: np.array(values, dtype=np.int64) for name, values in zip(RATING_FIELDS, columns)})


def read_users(path: str | Path) -> pd.DataFrame:
    """u.user (``user_id|age|gender|occupation|zip``): unique positive ids, ages 1..120, M/F."""
    path = Path(path)
    rows, seen = [], {}
    for number, line in _lines(path, "utf-8", "user"):
        user, age, gender, occupation, zip_code = _fields(path, number, line, "|", USER_FIELDS, 5)
        user_id = _integer(path, number, "user_id", user, 1, None, "a positive integer")
        _first_seen(path, number, "user_id", user_id, seen)
        age_years = _integer(path, number, "age", age, 1, MAX_AGE, f"an integer 1..{MAX_AGE}")
        if gender not in ("M", "F"):
            raise DataFileError(f"{path}:{number}: gender {gender!r}: expected 'M' or 'F'")
        if not occupation.strip():
            raise DataFileError(f"{path}:{number}: occupation {occupation!r}: expected a name")
        rows.append((user_id, age_years, gender, occupation, zip_code or None))
    user_ids, ages, genders, occupations, zips = zip(*rows)
    return pd.DataFrame({"user_id": np.array(user_ids, dtype=np.int64), "age": np.array(ages, dtype=np.int64),
                         "gender": list(genders), "occupation": list(occupations),
                         "zip": pd.Series(zips, dtype=str)})


def read_genres(path: str | Path) -> list[str]:
    """u.genre (``name|index``): the genre names in index order (unique names and indices)."""
    path = Path(path)
    genres, names, indices = [], {}, {}
    for number, line in _lines(path, "utf-8", "genre"):
        name, index = _fields(path, number, line, "|", ("genre", "index"), 2)
        if not name.strip():
            raise DataFileError(f"{path}:{number}: genre {name!r}: expected a name")
        _first_seen(path, number, "genre", name, names)
        position = _integer(path, number, "index", index, 0, None, "a non-negative integer")
        _first_seen(path, number, "index", position, indices)
        genres.append((position, name))
    return [name for _, name in sorted(genres)]


def _release_date(path: Path, number: int, text: str) -> str | None:
    if not text:
        return None
    match = RELEASE_DATE.fullmatch(text)
    try:
        if match is None or match.group(2).title() not in MONTHS:
            raise ValueError(text)
        date(int(match.group(3)), MONTHS.index(match.group(2).title()) + 1, int(match.group(1)))
    except ValueError:
        raise DataFileError(f"{path}:{number}: release_date {text!r}: expected a date like 01-Jan-1995, or nothing") from None
    return text


def read_items(path: str | Path, genres: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """u.item (Latin-1; ``item_id|title|release_date|video_release_date|imdb_url|`` and one 0/1
    flag per genre): a frame of ``item_id``, ``title_raw``, ``release_date`` (None when empty) and
    the (items, genres) bool matrix of the flags."""
    path = Path(path)
    width = len(ITEM_FIELDS) + len(genres)
    described = f"{', '.join(ITEM_FIELDS)} and {len(genres)} genre flags"
    ids, titles, dates, flags, seen = [], [], [], [], {}
    for number, line in _lines(path, "latin-1", "item"):
        fields = _fields(path, number, line, "|", described, width)
        item_id = _integer(path, number, "item_id", fields[0], 1, None, "a positive integer")
        _first_seen(path, number, "item_id", item_id, seen)
        for genre, flag in zip(genres, fields[len(ITEM_FIELDS):]):
            if flag not in ("0", "1"):
                raise DataFileError(f"{path}:{number}: genre flag {genre} {flag!r}: expected 0 or 1")
        ids.append(item_id)
        titles.append(fields[1] or None)
        dates.append(_release_date(path, number, fields[2]))
        flags.append([flag == "1" for flag in fields[len(ITEM_FIELDS):]])
    frame = pd.DataFrame({"item_id": np.array(ids, dtype=np.int64), "title_raw": pd.Series(titles, dtype=str),
                          "release_date": pd.Series(dates, dtype=str)})
    return frame, np.array(flags, dtype=bool).reshape(len(ids), len(genres))


def load_movielens_100k(config: MovieLensConfig | None = None) -> pd.DataFrame:
    """One row per rating with user, item and label columns (see the module docstring)."""
    config = config or MovieLensConfig()
    config.check()
    root = Path(config.root) if config.root else default_root()
    if not (root / "u.data").is_file():
        raise FileNotFoundError(f"{root / 'u.data'}: MovieLens-100K file not found (expected the GroupLens ml-100k layout)")
    users = read_users(root / "u.user")
    genre_names = read_genres(root / "u.genre")
    items, flags = read_items(root / "u.item", genre_names)
    ratings = read_ratings(root / "u.data", set(users["user_id"].tolist()), set(items["item_id"].tolist()))

    names = np.array(genre_names, dtype=object)
    items["genres"] = [config.genre_sep.join(names[row]) for row in flags]  # 1,682 items: fine
    title = items["title_raw"].fillna("").astype(str)
    year = pd.to_numeric(title.str.extract(r"\((\d{4})\)\s*$")[0], errors="coerce")
    date_year = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce").dt.year
    year = year.fillna(date_year)
    if year.isna().any():
        median = float(year.median())
        log.info("ml-100k: %d items have no release year; using the median %.0f", int(year.isna().sum()), median)
        year = year.fillna(median)
    items["release_year"] = year.astype(np.float64)
    items["title"] = title.str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True).str.strip()

    users["age_bucket"] = pd.cut(users["age"], bins=[-np.inf, *AGE_BUCKETS, np.inf], right=False, labels=AGE_LABELS).astype(str)
    users["zip_prefix"] = users["zip"].fillna("").str.upper().str[: config.zip_prefix_len]
    users["age"] = users["age"].astype(np.float64)

    frame = ratings.merge(users[["user_id", "age", "age_bucket", "gender", "occupation", "zip_prefix"]], on="user_id", how="left")
    frame = frame.merge(items[["item_id", "title", "release_year", "genres"]], on="item_id", how="left")
    frame["label"] = (frame["rating"] >= config.like_threshold).astype(np.float32)
    if config.max_rows is not None and config.max_rows < len(frame):
        frame = frame.sample(n=config.max_rows, random_state=config.split_seed)
    return frame.reset_index(drop=True)


def load_movielens_splits(config: MovieLensConfig) -> dict[str, pd.DataFrame]:
    """Load ML-100K and split it as ``config.split`` says."""
    return split_by(load_movielens_100k(config), config, config.split, "ml-100k")
