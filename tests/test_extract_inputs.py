"""mmfusion.extract on bad inputs: each is reported per file, never stops the batch, sets the exit code."""

from __future__ import annotations

import csv
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmfusion.data.mmsa import describe, load_mmsa
from mmfusion.extract.__main__ import main as extract_main
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
