"""mmfusion.extract on bad inputs: each is reported per file, never stops the batch, sets the exit code."""

from __future__ import annotations

import csv
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmfusion.data.mmsa import describe, load_mmsa
from mmfusion.extract.cli import main as extract_main
from mmfusion.extract.pipeline import ExtractConfig, extract
from mmfusion.extract.synthclip import write_clip
from mmfusion.extract.visual import VisualConfig

GOOD = {"g_train.mp4": "train", "g_valid.mp4": "valid", "g_test.mp4": "test"}


@pytest.fixture(scope="module")
def good_clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    for i, name in enumerate(GOOD):
        write_clip(folder / name, 0.8, tone_hz=200.0 + 50 * i, hue=0.2 * i)
    return folder


@pytest.fixture
def case(good_clips, tmp_path):
    """A folder with the three good clips (one per split) plus whatever a test adds, and a runner."""
    videos = tmp_path / "videos"
    shutil.copytree(good_clips, videos)
    rows = [{"video": name, "id": name[:-4], "text": f"good clip {name}", "split": split} for name, split in GOOD.items()]

    def run(extra_rows: list[dict], *flags: str, rows_override: list[dict] | None = None) -> tuple[int, Path]:
        all_rows = rows_override if rows_override is not None else rows + extra_rows
        fields = list(dict.fromkeys(k for r in all_rows for k in r))
        with open(tmp_path / "meta.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(all_rows)
        out = tmp_path / "feats.pkl"
        code = extract_main(["--videos", str(videos), "--meta", str(tmp_path / "meta.csv"), "--out", str(out),
                             "--visual", "stats", "--workers", "1", "--no-cache", "--log-level", "WARNING", *flags])
        return code, out

    return videos, run


def summary_line(capsys, name: str) -> str:
    lines = [line for line in capsys.readouterr().out.splitlines() if f" {name} (" in line]
    assert len(lines) == 1, lines
    return lines[0]


def assert_good_clips_written(out: Path, extra_ids: tuple[str, ...] = ()) -> None:
    data = load_mmsa(out)  # the rest of the batch is a valid MMSA pickle
    ids = sorted(i for s in data.splits.values() for i in s.ids)
    assert ids == sorted(["g_train", "g_valid", "g_test", *extra_ids])


def test_missing_file(case, capsys):
    videos, run = case
    code, out = run([{"video": "gone.mp4", "id": "gone", "text": "x", "split": "test"}], "--workers", "2")
    assert code == 1
    assert summary_line(capsys, "gone.mp4").endswith("(meta.csv line 5, id gone): file not found")
    assert_good_clips_written(out)


def test_unreadable_file(case, capsys):
    videos, run = case
    (videos / "junk.mp4").write_bytes(b"this is not a video " * 50)
    code, out = run([{"video": "junk.mp4", "id": "junk", "text": "x", "split": "test"}])
    assert code == 1
    assert "failed   junk.mp4" in (line := summary_line(capsys, "junk.mp4"))
    assert "not a readable media container" in line
    assert_good_clips_written(out)


def test_video_without_audio_track(case, capsys):
    videos, run = case
    write_clip(videos / "mute.mp4", 1.0, audio=False)
    code, out = run([{"video": "mute.mp4", "id": "mute", "text": "x", "split": "test"}])
    assert code == 0  # extracted: zeros + a flag, not a failure
    assert summary_line(capsys, "mute.mp4").startswith("  no audio mute.mp4")
    assert_good_clips_written(out, ("mute",))
    raw = pickle.loads(out.read_bytes())["test"]
    row = list(raw["id"]).index("mute")
    assert raw["audio_missing"].tolist() == [False, True] and raw["audio_lengths"][row] == 0
    assert not raw["audio"][row].any() and raw["vision_lengths"][row] == 5


def test_zero_length_file(case, capsys):
    videos, run = case
    (videos / "empty.mp4").write_bytes(b"")
    code, out = run([{"video": "empty.mp4", "id": "empty", "text": "x", "split": "valid"}])
    assert code == 1
    assert summary_line(capsys, "empty.mp4").endswith("empty file (0 bytes)")
    assert_good_clips_written(out)


def test_truncated_container(case, capsys):
    videos, run = case
    whole = (videos / "g_test.mp4").read_bytes()
    (videos / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # the index (moov) at the end is lost
    code, out = run([{"video": "cut.mp4", "id": "cut", "text": "x", "split": "test"}])
    assert code == 1
    assert "not a readable media container" in summary_line(capsys, "cut.mp4")
    assert_good_clips_written(out)


def test_corrupt_stream(case, capsys):
    videos, run = case
    write_clip(videos / "garbled.mp4", 3.0, size=(160, 96))
    data = bytearray((videos / "garbled.mp4").read_bytes())
    n = len(data)
    data[n // 4 : n // 4 + n // 3] = np.random.default_rng(0).integers(0, 256, n // 3, dtype=np.uint8).tobytes()
    (videos / "garbled.mp4").write_bytes(bytes(data))
    code, out = run([{"video": "garbled.mp4", "id": "garbled", "text": "x", "split": "test"}])
    assert code == 1
    assert "corrupt stream" in summary_line(capsys, "garbled.mp4")
    assert_good_clips_written(out)


def test_no_video_stream(case, capsys):
    videos, run = case
    write_clip(videos / "voice.mp4", 1.0, video=False)
    code, out = run([{"video": "voice.mp4", "id": "voice", "text": "x", "split": "test"}])
    assert code == 1
    assert summary_line(capsys, "voice.mp4").endswith("no video stream in the container")
    assert_good_clips_written(out)


def test_mismatched_meta_rows(case, capsys):
    videos, run = case
    good = [{"video": name, "id": name[:-4], "text": "t", "split": split, "label": "0.5"} for name, split in GOOD.items()]
    code, out = run(
        [],
        "--labels",
        rows_override=good + [
            {"video": "g_test.mp4", "id": "g_train", "text": "same id again", "split": "test", "label": "1"},
            {"video": "g_test.mp4", "id": "", "text": "no id", "split": "test", "label": "1"},
            {"video": "", "id": "novideo", "text": "no file name", "split": "test", "label": "1"},
            {"video": "g_test.mp4", "id": "loud", "text": "label too big", "split": "test", "label": "4"},
            {"video": "g_test.mp4", "id": "word", "text": "label not a number", "split": "test", "label": "good"},
            {"video": "g_test.mp4", "id": "dev", "text": "unknown split", "split": "dev", "label": "1"},
        ],
    )
    assert code == 1
    report = capsys.readouterr().out
    for expected in (
        "(meta.csv line 5, id g_train): meta.csv: id 'g_train' repeats line 2",
        "(meta.csv line 6): meta.csv: column 'id' is empty",
        "(meta.csv line 7, id novideo): meta.csv: column 'video' is empty",
        "(meta.csv line 8, id loud): meta.csv: label '4': expected a number in [-3, 3]",
        "(meta.csv line 9, id word): meta.csv: label 'good': expected a number in [-3, 3]",
        "(meta.csv line 10, id dev): meta.csv: split 'dev': expected one of ['train', 'valid', 'test']",
    ):
        assert expected in report
    assert "extraction summary: 3 ok, 0 no audio, 6 failed, 0 skipped" in report  # the good rows are kept
    assert_good_clips_written(out)
    np.testing.assert_allclose(load_mmsa(out).train.labels, [0.5])


def test_files_not_in_meta_are_skipped(case, capsys):
    videos, run = case
    write_clip(videos / "stray.mp4", 0.5)
    code, out = run([])
    assert code == 0  # reported, not a failure
    assert summary_line(capsys, "stray.mp4").endswith("stray.mp4 (not in meta.csv): not listed in meta.csv")
    assert_good_clips_written(out)


def test_unusable_meta_exits_2(case, caplog):
    videos, run = case
    rows = [{"video": name, "id": name[:-4], "title": "wrong column name"} for name in GOOD]
    code, out = run([], rows_override=rows)
    assert code == 2 and not out.exists()
    assert "column(s) ['text'] missing" in caplog.text
    rows = [{"video": name, "id": name[:-4], "text": "x"} for name in GOOD]
    code, out = run([], "--labels", rows_override=rows)
    assert code == 2 and "column(s) ['label'] missing" in caplog.text


def test_missing_videos_folder_exits_2(tmp_path, caplog):
    (tmp_path / "meta.csv").write_text("video,id,text\na.mp4,a,x\n")
    code = extract_main(["--videos", str(tmp_path / "nowhere"), "--meta", str(tmp_path / "meta.csv"),
                         "--out", str(tmp_path / "f.pkl"), "--visual", "stats", "--log-level", "WARNING"])
    assert code == 2 and "nowhere: videos folder not found" in caplog.text
    assert not (tmp_path / "f.pkl").exists()


def test_nothing_extracted_exits_2(case, capsys):
    videos, run = case
    code, out = run([], rows_override=[{"video": "gone.mp4", "id": "gone", "text": "x"}])
    assert code == 2 and not out.exists()
    assert "failed   gone.mp4" in capsys.readouterr().out


def test_rows_without_split_go_to_the_default_split(good_clips, tmp_path):
    meta = tmp_path / "meta.csv"
    meta.write_text("video,id,text,split\ng_train.mp4,a,x,\ng_valid.mp4,b,y,train\ng_test.mp4,c,z,\n")
    cfg = ExtractConfig(visual=VisualConfig(backbone="stats"))
    data = extract(good_clips, meta, cfg, default_split="valid").data
    assert [list(data[s]["id"]) for s in ("train", "valid", "test")] == [["b"], ["a", "c"], []]
    empty = data["test"]  # an empty split keeps the widths of the others
    assert empty["audio"].shape == (0, data["train"]["audio"].shape[1], 74) and empty["text_bert"].shape == (0, 3, 50)
    meta.write_text("video,id,text\ng_train.mp4,a,x\ng_test.mp4,c,z\n")
    data = extract(good_clips, meta, cfg).data
    assert [len(data[s]["id"]) for s in ("train", "valid", "test")] == [0, 0, 2]  # --split default: test


def test_default_split_pickle_loads(good_clips, tmp_path):
    (tmp_path / "meta.csv").write_text("video,id,text\ng_test.mp4,c,unlabelled product video\n")
    out = tmp_path / "feats.pkl"
    assert extract_main(["--videos", str(good_clips), "--meta", str(tmp_path / "meta.csv"), "--out", str(out),
                         "--visual", "stats", "--workers", "1", "--no-cache", "--log-level", "WARNING"]) == 0
    data = load_mmsa(out)  # train and valid are empty: every clip is in --split (test)
    assert [len(data.splits[s]) for s in ("train", "valid", "test")] == [0, 0, 1]
    assert "train       0  (empty)" in describe(data)


# ------------------------------------------------------------------------------------------
# meta.csv paths confined to --videos, strict CSV rows, numeric options
# ------------------------------------------------------------------------------------------


def write_raw_meta(tmp_path: Path, text: str | bytes) -> Path:
    meta = tmp_path / "meta.csv"
    meta.write_bytes(text if isinstance(text, bytes) else text.encode())
    return meta


def run_cli(videos: Path, meta: Path, out: Path, *flags: str) -> int:
    return extract_main(["--videos", str(videos), "--meta", str(meta), "--out", str(out), "--visual", "stats",
                         "--workers", "1", "--no-cache", "--log-level", "WARNING", *flags])


def test_paths_outside_the_videos_folder_are_refused(case, tmp_path, capsys):
    videos, run = case
    shutil.copy(videos / "g_test.mp4", tmp_path / "outside.mp4")  # a real, readable clip next to the folder
    (videos / "link_out.mp4").symlink_to(tmp_path / "outside.mp4")  # inside by name, outside by target
    (videos / "sub").mkdir()
    shutil.copy(videos / "g_valid.mp4", videos / "sub" / "deep.mp4")
    (videos / "link_in.mp4").symlink_to(videos / "g_train.mp4")  # a link that stays inside is fine
    code, out = run([
        {"video": "../outside.mp4", "id": "up", "text": "x", "split": "test"},
        {"video": str(tmp_path / "outside.mp4"), "id": "abs", "text": "x", "split": "test"},
        {"video": "link_out.mp4", "id": "link", "text": "x", "split": "test"},
        {"video": "sub/../../outside.mp4", "id": "twisty", "text": "x", "split": "test"},
        {"video": "sub/deep.mp4", "id": "deep", "text": "x", "split": "test"},
        {"video": "link_in.mp4", "id": "alias", "text": "x", "split": "test"},
        {"video": str(videos / "g_test.mp4"), "id": "abs_inside", "text": "x", "split": "test"},
    ])
    assert code == 1
    report = capsys.readouterr().out
    outside = (tmp_path / "outside.mp4").resolve()
    for line, clip_id, video in ((5, "up", "../outside.mp4"), (6, "abs", str(tmp_path / "outside.mp4")),
                                 (7, "link", "link_out.mp4"), (8, "twisty", "sub/../../outside.mp4")):
        assert (f"failed   {video} (meta.csv line {line}, id {clip_id}): meta.csv: column 'video' {video!r} "
                f"resolves to {outside}, outside --videos {videos.resolve()}; expected a file inside it") in report
    assert "extraction summary: 6 ok, 0 no audio, 4 failed, 0 skipped" in report
    assert_good_clips_written(out, ("deep", "alias", "abs_inside"))  # nothing from outside was read


def test_malformed_rows_are_refused_without_shifting_the_others(good_clips, tmp_path, capsys):
    meta = write_raw_meta(tmp_path, (
        "video,id,text,split\n"
        "g_train.mp4,g_train,great, really great,train\n"  # an unquoted comma: 5 fields
        "g_valid.mp4,g_valid,\"fine, quoted\",valid\n"
        "\n"  # a blank line is skipped but counted
        "g_test.mp4,g_test\n"  # two columns missing
        "g_test.mp4,c2,\"two\nlines\",test\n"  # a quoted newline: the record spans lines 6-7
        "g_train.mp4,c3,x,test,\n"  # a trailing comma is an empty fifth field
    ))
    out = tmp_path / "feats.pkl"
    assert run_cli(good_clips, meta, out) == 1
    report = capsys.readouterr().out
    for line, detail in (
        (2, "expected 4 fields (video, id, text, split), got 5; quote a field that contains a comma"),
        (5, "expected 4 fields (video, id, text, split), got 2; a column is missing"),
        (8, "expected 4 fields (video, id, text, split), got 5; quote a field that contains a comma"),
    ):
        assert f"(meta.csv line {line}): meta.csv: {detail}" in report, report
    assert "extraction summary: 2 ok, 0 no audio, 3 failed" in report
    data = load_mmsa(out)  # the good rows kept their own columns: nothing shifted
    assert list(data.splits["valid"].ids) == ["g_valid"] and list(data.splits["test"].ids) == ["c2"]
    assert list(data.splits["valid"].raw_text) == ["fine, quoted"]
    assert list(data.splits["test"].raw_text) == ["two\nlines"]


@pytest.mark.parametrize("text, message", [
    (b"video,id,text\ng_test.mp4,a,\"never closed\n", r"meta\.csv line 2: not valid CSV \(unexpected end of data\)"),
    (b"video,id,text\ng_test.mp4,a,\"x\"y\n", r"meta\.csv line 2: not valid CSV \(',' expected after '\"'\)"),
    (b"video,id,text\ng_test.mp4,a,ok\ng_test.mp4,b,caf\xe9\n", r"meta\.csv line 3: not UTF-8 text"),
    (b"", r"meta\.csv: empty; expected a header row \(video,id,text"),
    (b"video,id,text,id\ng_test.mp4,a,x,b\n", r"meta\.csv line 1: column 'id' appears twice"),
])
def test_unparseable_meta_exits_2_naming_the_line(good_clips, tmp_path, caplog, text, message):
    meta = write_raw_meta(tmp_path, text)
    out = tmp_path / "feats.pkl"
    assert run_cli(good_clips, meta, out) == 2 and not out.exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0] and re.search(message, errors[0]), errors


def test_byte_order_mark_and_crlf_are_read(good_clips, tmp_path):
    meta = write_raw_meta(tmp_path, b"\xef\xbb\xbfvideo,id,text\r\ng_test.mp4,c,hello\r\n")
    data = extract(good_clips, meta, ExtractConfig(visual=VisualConfig(backbone="stats"))).data
    assert list(data["test"]["id"]) == ["c"] and list(data["test"]["raw_text"]) == ["hello"]


@pytest.mark.parametrize("flag, value, expected", [
    ("--fps", "-5", "a number in (0, 1000]"),
    ("--fps", "0", "a number in (0, 1000]"),
    ("--fps", "nan", "a number in (0, 1000]"),
    ("--fps", "inf", "a number in (0, 1000]"),
    ("--fps", "1e9", "a number in (0, 1000]"),
    ("--fps", "five", "a number in (0, 1000]"),
    ("--audio-dim", "0", "an integer in [1, 512]"),
    ("--audio-dim", "100000", "an integer in [1, 512]"),
    ("--max-audio-len", "0", "an integer in [1, 1000000]"),
    ("--max-vision-len", "-1", "an integer in [1, 1000000]"),
    ("--max-vision-len", "2.5", "an integer in [1, 1000000]"),
    ("--text-len", "1", "an integer in [2, 512]"),
    ("--text-len", "100000", "an integer in [2, 512]"),
    ("--workers", "0", "an integer in [1, 256]"),
    ("--log-level", "LOUD", "invalid choice: 'LOUD'"),
])
def test_bad_numeric_options_exit_2_with_one_line(good_clips, tmp_path, capsys, flag, value, expected):
    meta = write_raw_meta(tmp_path, "video,id,text\ng_test.mp4,c,x\n")
    out = tmp_path / "feats.pkl"
    args = ["--videos", str(good_clips), "--meta", str(meta), "--out", str(out), "--visual", "stats", "--no-cache",
            "--workers", "1", "--log-level", "WARNING", flag, value]
    assert extract_main(args) == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"python -m mmfusion.extract: error: argument {flag}: ") and expected in err, err
    if expected.startswith("a") and value not in ("five", "2.5"):
        assert f"got {value!r}" in err or f"got {value}" in err, err


@pytest.mark.parametrize("options, message", [
    ({"fps": -5.0}, "fps -5.0: expected a number in (0, 1000]"),
    ({"fps": float("nan")}, "fps nan: expected a number in (0, 1000]"),
    ({"max_audio_len": 0}, "max_audio_len 0: expected an integer in [1, 1000000]"),
    ({"max_vision_len": 10**9}, "max_vision_len 1000000000: expected an integer in [1, 1000000]"),
    ({"decode_threads": -1}, "decode_threads -1: expected an integer in [0, 64]"),
])
def test_extract_config_refuses_bad_numbers(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ExtractConfig(visual=VisualConfig(backbone="stats"), **options)


def test_extract_refuses_bad_workers_and_text_len(good_clips, tmp_path):
    meta = write_raw_meta(tmp_path, "video,id,text\ng_test.mp4,c,x\n")
    cfg = ExtractConfig(visual=VisualConfig(backbone="stats"))
    with pytest.raises(ValueError, match=re.escape("workers 0: expected an integer in [1, 256]")):
        extract(good_clips, meta, cfg, workers=0)
    with pytest.raises(ValueError, match=re.escape("text_len 1: expected an integer in [2, 512]")):
        extract(good_clips, meta, cfg, text_len=1)


def test_unwritable_output_and_bad_weights_exit_2_without_traceback(good_clips, tmp_path, caplog):
    meta = write_raw_meta(tmp_path, "video,id,text\ng_test.mp4,c,x\n")
    (tmp_path / "afile").write_text("a file, not a folder")
    assert run_cli(good_clips, meta, tmp_path / "afile" / "feats.pkl") == 2
    assert any("feats.pkl: cannot write the pickle" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    junk = tmp_path / "weights.pt"
    junk.write_bytes(b"not a torch file")
    code = extract_main(["--videos", str(good_clips), "--meta", str(meta), "--out", str(tmp_path / "f.pkl"),
                         "--visual", "resnet18", "--vision-weights", str(junk), "--log-level", "WARNING"])
    assert code == 2
    assert any(f"{junk}: not a readable torch state-dict file" in r.getMessage() for r in caplog.records)
    assert run_cli(good_clips, tmp_path, tmp_path / "f.pkl") == 2  # --meta is a folder
    assert any("not a readable CSV file" in r.getMessage() for r in caplog.records)
