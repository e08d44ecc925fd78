"""Malformed data files are refused with one line naming the file, the line, the field and what was
expected: MovieLens-100K (small corrupted copies of the real files) and the e-commerce impressions."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xdeepfm.data import DataFileError
from xdeepfm.data.ecommerce import EcommerceConfig, load_impressions
from xdeepfm.data.movielens import MovieLensConfig, default_root, load_movielens_100k, read_ratings

REAL = default_root()
FILES = ("u.data", "u.user", "u.item", "u.genre")


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return load_movielens_100k(MovieLensConfig(root=str(REAL)))


@pytest.fixture
def copy(tmp_path) -> Path:
    """A writable copy of the real ml-100k files."""
    root = tmp_path / "ml-100k"
    root.mkdir()
    for name in FILES:
        shutil.copy(REAL / name, root / name)
    return root


def lines_of(root: Path, name: str) -> list[bytes]:
    return (root / name).read_bytes().split(b"\n")


def encoding(name: str) -> str:
    return "latin-1" if name == "u.item" else "utf-8"


def set_line(root: Path, name: str, number: int, text: bytes | str) -> None:
    """Replace 1-based line ``number`` of ``root/name``."""
    lines = lines_of(root, name)
    lines[number - 1] = text.encode(encoding(name)) if isinstance(text, str) else text
    (root / name).write_bytes(b"\n".join(lines))


def set_field(root: Path, name: str, number: int, index: int, value: str) -> None:
    sep = "\t" if name == "u.data" else "|"
    fields = lines_of(root, name)[number - 1].decode(encoding(name)).split(sep)
    fields[index] = value
    set_line(root, name, number, sep.join(fields))


def refused(root: Path, message: str) -> None:
    with pytest.raises(DataFileError, match=message) as caught:
        load_movielens_100k(MovieLensConfig(root=str(root)))
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


def test_copy_of_the_real_files_loads_the_same_frame(copy, reference):
    pd.testing.assert_frame_equal(load_movielens_100k(MovieLensConfig(root=str(copy))), reference)


def test_windows_line_ends_load_the_same_frame(copy, reference):
    for name in FILES:
        path = copy / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    pd.testing.assert_frame_equal(load_movielens_100k(MovieLensConfig(root=str(copy))), reference)


# ----------------------------------------------------------------------------------------- u.data


@pytest.mark.parametrize("value, shown", [
    ("x", "'x'"), ("", "''"), ("3\x00", r"'3\\x00'"), ("0", "'0'"), ("6", "'6'"), ("-1", "'-1'"), ("3.5", "'3.5'"),
    ("²", "'²'"), (" 3", "' 3'"),
])
def test_u_data_rating_must_be_an_integer_1_to_5(copy, value, shown):
    set_field(copy, "u.data", 17, 2, value)
    refused(copy, rf"u\.data:17: rating {shown}: expected an integer 1\.\.5$")


@pytest.mark.parametrize("index, field, value", [
    (0, "user_id", "abc"), (0, "user_id", "0"), (1, "item_id", "-4"), (1, "item_id", "\x00"),
])
def test_u_data_ids_must_be_positive_integers(copy, index, field, value):
    set_field(copy, "u.data", 3, index, value)
    refused(copy, rf"u\.data:3: {field} {re.escape(repr(value))}: expected a positive integer$")


def test_u_data_timestamp_must_be_a_non_negative_integer(copy):
    set_field(copy, "u.data", 99_999, 3, "yesterday")
    refused(copy, r"u\.data:99999: timestamp 'yesterday': expected a non-negative integer")
    set_field(copy, "u.data", 99_999, 3, "9" * 30)  # over int64
    refused(copy, r"u\.data:99999: timestamp '9{30}': expected a non-negative integer")


def test_u_data_nul_byte_anywhere_is_named(copy):
    set_line(copy, "u.data", 40, b"196\t242\t3\x00\t881250949")
    refused(copy, r"u\.data:40: rating '3\\x00': expected an integer 1\.\.5")
    set_line(copy, "u.data", 40, b"\x00")
    refused(copy, r"u\.data:40: expected 4 tab-separated fields \(user_id, item_id, rating, timestamp\), found 1")


@pytest.mark.parametrize("line, found", [(b"196\t242\t3", 3), (b"196 242 3 881250949", 1), (b"1\t2\t3\t4\t5", 5)])
def test_u_data_lines_need_exactly_four_fields(copy, line, found):
    set_line(copy, "u.data", 5, line)
    refused(copy, rf"u\.data:5: expected 4 tab-separated fields \(user_id, item_id, rating, timestamp\), found {found}$")


def test_u_data_empty_file_and_undecodable_line(copy):
    (copy / "u.data").write_bytes(b"")
    refused(copy, r"u\.data: the file is empty; expected one rating per line")
    (copy / "u.data").write_bytes(b"\n\n")
    refused(copy, r"u\.data: the file is empty")
    shutil.copy(REAL / "u.data", copy / "u.data")
    set_line(copy, "u.data", 8, b"196\t242\t\xff\t881250949")
    refused(copy, r"u\.data:8: not UTF-8 text")


def test_u_data_ids_must_be_in_u_user_and_u_item(copy):
    set_field(copy, "u.data", 12, 0, "944")
    refused(copy, r"u\.data:12: user_id 944: not in u\.user \(943 users\)$")
    shutil.copy(REAL / "u.data", copy / "u.data")
    set_field(copy, "u.data", 13, 1, "1683")
    refused(copy, r"u\.data:13: item_id 1683: not in u\.item \(1682 items\)$")


def test_u_data_blank_lines_are_skipped_and_line_numbers_stay_physical(copy, reference):
    lines = lines_of(copy, "u.data")
    (copy / "u.data").write_bytes(b"\n".join([lines[0], b"", *lines[1:]]))
    pd.testing.assert_frame_equal(load_movielens_100k(MovieLensConfig(root=str(copy))), reference)
    set_field(copy, "u.data", 3, 2, "9")  # line 3 of the file: the second rating, after the blank line
    refused(copy, r"u\.data:3: rating '9'")


# ----------------------------------------------------------------------------------------- u.user


@pytest.mark.parametrize("index, value, message", [
    (1, "-3", r"age '-3': expected an integer 1\.\.120"),
    (1, "0", r"age '0': expected an integer 1\.\.120"),
    (1, "old", r"age 'old': expected an integer 1\.\.120"),
    (2, "X", r"gender 'X': expected 'M' or 'F'"),
    (3, "", r"occupation '': expected a name"),
    (0, "u7", r"user_id 'u7': expected a positive integer"),
])
def test_u_user_fields(copy, index, value, message):
    set_field(copy, "u.user", 4, index, value)
    refused(copy, rf"u\.user:4: {message}$")


def test_u_user_short_line_and_duplicate_id(copy):
    set_line(copy, "u.user", 6, "6|42|M|executive")
    refused(copy, r"u\.user:6: expected 5 '\|'-separated fields \(user_id, age, gender, occupation, zip\), found 4$")
    shutil.copy(REAL / "u.user", copy / "u.user")
    set_field(copy, "u.user", 10, 0, "3")
    refused(copy, r"u\.user:10: user_id 3: duplicate \(first on line 3\)$")


# ----------------------------------------------------------------------------------------- u.item


@pytest.mark.parametrize("value", ["2", "", "yes", "-1"])
def test_u_item_genre_flags_are_0_or_1(copy, value):
    set_field(copy, "u.item", 5, 5 + 5, value)  # the sixth flag: Comedy
    refused(copy, rf"u\.item:5: genre flag Comedy {re.escape(repr(value))}: expected 0 or 1$")


def test_u_item_short_line_duplicate_id_and_release_date(copy):
    set_line(copy, "u.item", 7, "7|Twelve Monkeys (1995)|01-Jan-1995||http://x|0|0")
    refused(copy, r"u\.item:7: expected 24 '\|'-separated fields \(item_id, title, release_date, video_release_date, "
                  r"imdb_url and 19 genre flags\), found 7$")
    shutil.copy(REAL / "u.item", copy / "u.item")
    set_field(copy, "u.item", 9, 0, "2")
    refused(copy, r"u\.item:9: item_id 2: duplicate \(first on line 2\)$")
    shutil.copy(REAL / "u.item", copy / "u.item")
    set_field(copy, "u.item", 9, 2, "1995-01-01")
    refused(copy, r"u\.item:9: release_date '1995-01-01': expected a date like 01-Jan-1995, or nothing$")
    set_field(copy, "u.item", 9, 2, "31-Feb-1995")
    refused(copy, r"u\.item:9: release_date '31-Feb-1995': expected a date like 01-Jan-1995")
    set_field(copy, "u.item", 9, 0, "zero")
    refused(copy, r"u\.item:9: item_id 'zero': expected a positive integer$")


def test_u_item_an_empty_release_date_still_loads(copy, reference):
    set_field(copy, "u.item", 1, 2, "")  # Toy Story's release date: the year still comes from the title
    frame = load_movielens_100k(MovieLensConfig(root=str(copy)))
    pd.testing.assert_frame_equal(frame, reference)


# ---------------------------------------------------------------------------------------- u.genre


def test_u_genre_fields_and_duplicates(copy):
    set_line(copy, "u.genre", 3, "Adventure")
    refused(copy, r"u\.genre:3: expected 2 '\|'-separated fields \(genre, index\), found 1$")
    set_line(copy, "u.genre", 3, "Adventure|two")
    refused(copy, r"u\.genre:3: index 'two': expected a non-negative integer$")
    set_line(copy, "u.genre", 3, "Action|2")
    refused(copy, r"u\.genre:3: genre 'Action': duplicate \(first on line 2\)$")
    set_line(copy, "u.genre", 3, "Adventure|1")
    refused(copy, r"u\.genre:3: index 1: duplicate \(first on line 2\)$")
    set_line(copy, "u.genre", 3, "|2")
    refused(copy, r"u\.genre:3: genre '': expected a name$")


def test_missing_file_is_named(copy):
    (copy / "u.item").unlink()
    with pytest.raises(FileNotFoundError, match=r"u\.item: MovieLens-100K file not found"):
        load_movielens_100k(MovieLensConfig(root=str(copy)))


# ------------------------------------------------------------------------- the u.data reader, fuzzed

FIELD = st.one_of(
    st.integers(-3, 2000).map(str),
    st.text(alphabet="0123456789-+. x\x00\r²", max_size=5),
    st.text(max_size=4),
)
LINE = st.one_of(
    st.tuples(st.integers(1, 943), st.integers(1, 1682), st.integers(1, 5), st.integers(0, 2**40))
      .map(lambda t: "\t".join(map(str, t)).encode()),
    st.lists(FIELD, min_size=0, max_size=6).map(lambda fields: "\t".join(fields).encode("utf-8")),
    st.binary(max_size=12),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(LINE, max_size=8), crlf=st.booleans())
def test_u_data_reader_gives_a_valid_frame_or_a_value_error_naming_file_and_line(lines, crlf):
    """Random lines: a frame of valid ratings, or a DataFileError naming the file (and the line
    when one line is at fault), never another exception."""
    content = (b"\r\n" if crlf else b"\n").join(lines)
    physical = content.split(b"\n")  # a random line may hold newlines of its own
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "u.data"
        path.write_bytes(content)
        try:
            frame = read_ratings(path)
        except DataFileError as exc:
            message = str(exc)
            event("refused")
            assert "\n" not in message
            assert message.startswith(f"{path}:"), message
            if "the file is empty" not in message:
                line = int(re.match(rf"{re.escape(str(path))}:(\d+): ", message).group(1))
                assert 1 <= line <= len(physical)
            return
        event("a valid frame")
        assert list(frame.columns) == ["user_id", "item_id", "rating", "timestamp"]
        assert len(frame) >= 1 and all(frame[c].dtype == np.int64 for c in frame.columns)
        assert frame["rating"].between(1, 5).all() and (frame[["user_id", "item_id"]] >= 1).all().all()
        assert (frame["timestamp"] >= 0).all()
        assert len(frame) == sum(bool(line.strip(b" \t\r")) for line in physical)


# ----------------------------------------------------------------------------- e-commerce impressions

COLUMNS = ["user_id", "video_id", "category", "product", "brand", "price_band", "price", "title", "user_segment",
           "user_fav_category", "user_age", "click", "hidden_click_prob"]


def impressions(n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "user_id": [f"user_{i % 4}" for i in range(n)], "video_id": [f"video_{i % 5}" for i in range(n)],
        "category": "shoes", "product": "sneaker", "brand": "acme", "price_band": "mid",
        "price": np.round(rng.uniform(5, 50, n), 2), "title": [f"great sneaker, model {i}" for i in range(n)],
        "user_segment": "casual", "user_fav_category": "shoes", "user_age": rng.integers(18, 70, n),
        "click": rng.integers(0, 2, n), "hidden_click_prob": rng.uniform(0, 1, n),
    })


def write(tmp_path: Path, frame: pd.DataFrame) -> EcommerceConfig:
    folder = tmp_path / "ec"
    folder.mkdir(exist_ok=True)
    frame.to_csv(folder / "impressions.csv", index=False)
    return EcommerceConfig(kind="ecommerce", path=str(folder))


def refused_impressions(config: EcommerceConfig, message: str) -> None:
    with pytest.raises(DataFileError, match=message) as caught:
        load_impressions(config)
    assert "\n" not in str(caught.value)


def test_impressions_load_unchanged(tmp_path):
    frame = load_impressions(write(tmp_path, impressions()))
    assert len(frame) == 12 and frame["label"].dtype == np.float32 and (frame["label"] == frame["click"]).all()
    assert frame["price"].dtype == np.float64 and frame["user_id"].tolist()[:2] == ["user_0", "user_1"]


def test_impressions_required_columns(tmp_path):
    config = write(tmp_path, impressions().drop(columns=["click", "video_id"]))
    refused_impressions(config, r"impressions\.csv:1: columns \['click', 'video_id'\] are missing \(has \[")


@pytest.mark.parametrize("value, shown", [(2, "2"), ("yes", "'yes'"), ("", "''"), (0.5, "0.5"), (-1, "-1")])
def test_impressions_click_is_0_or_1(tmp_path, value, shown):
    frame = impressions().astype({"click": object})
    frame.loc[7, "click"] = value
    refused_impressions(write(tmp_path, frame),
                        rf"impressions\.csv: column 'click': row 7 is {shown}; expected 0 or 1 \(line 9\)$")


@pytest.mark.parametrize("column", ["user_id", "video_id"])
@pytest.mark.parametrize("value", ["", "  "])
def test_impressions_ids_are_not_empty(tmp_path, column, value):
    frame = impressions()
    frame.loc[3, column] = value
    refused_impressions(write(tmp_path, frame),
                        rf"impressions\.csv: column '{column}': row 3 is '{value}'; expected a non-empty id \(line 5\)$")


@pytest.mark.parametrize("column", ["price", "user_age"])
@pytest.mark.parametrize("value, shown", [(-1.5, "-1.5"), ("abc", "'abc'"), ("", "''"), ("inf", "inf"),
                                          ("-inf", "-inf"), ("1e400", "inf"), ("nan", "'nan'")])
def test_impressions_numeric_columns_are_finite_and_non_negative(tmp_path, column, value, shown):
    frame = impressions().astype({column: object})
    frame.loc[10, column] = value
    refused_impressions(write(tmp_path, frame),
                        rf"impressions\.csv: column '{column}': row 10 is {shown}; expected a finite number >= 0 "
                        r"\(line 12\)$")


def test_impressions_line_numbers_count_quoted_newlines(tmp_path):
    frame = impressions()
    frame.loc[2, "title"] = "two\nline title"
    frame.loc[5, "click"] = 3
    refused_impressions(write(tmp_path, frame), r"row 5 is 3; expected 0 or 1 \(line 8\)$")


def test_impressions_empty_or_unparsable_file(tmp_path):
    config = write(tmp_path, impressions())
    path = Path(config.path) / "impressions.csv"
    path.write_bytes(b"")
    refused_impressions(config, r"impressions\.csv: the file is empty; expected a header line and one impression per line")
    path.write_bytes(b"user_id,video_id,click\nu1,v1,1\nu2,v2,0,extra,fields\n")
    refused_impressions(config, r"impressions\.csv: not a readable CSV file \(")
    path.write_bytes(b"user_id,video_id,click\nu1,v1,1\nu\xff,v2,0\n")
    refused_impressions(config, r"impressions\.csv:3: not UTF-8 text")
