"""``r2.jobs``: folders, list files and annotation files turned into extraction jobs (the Python
API behind ``r2 extract``'s INPUTS and ``--annotations``). No video is decoded here: a file with a
video extension is taken by its name."""

import json
from pathlib import Path

import pytest

from r2.jobs import ExtractionJobs, InputError, jobs_from_annotations, jobs_from_paths, preset_fps
from r2.train.presets import get_preset

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_folders_and_list_files_give_one_job_per_video(tmp_path):
    videos = tmp_path / "videos"
    for name in ("a.mp4", "sub/b.mkv", "..mp4", "notes.txt"):
        touch(videos / name)
    other = touch(tmp_path / "elsewhere" / "c.webm")
    listing = tmp_path / "list.txt"
    listing.write_text("# one path a line\nelsewhere/c.webm\n\nelsewhere/gone.mp4\n")
    jobs = jobs_from_paths([videos, listing])
    assert isinstance(jobs, ExtractionJobs)
    assert {j.video_id: j.path for j in jobs.videos} == {
        "a": str(videos / "a.mp4"), "sub/b": str(videos / "sub/b.mkv"), "elsewhere/c": str(other)}
    assert [(f.video_id, f.reason) for f in jobs.failures] == [
        ("elsewhere/gone", f"file not found (line 4 of {listing})")]
    assert jobs.skipped == [str(videos / "..mp4")]
    assert jobs.queries == [] and jobs.dataset is None and jobs.fps == 0.5


def test_the_rate_is_the_given_one_else_the_presets(tmp_path):
    touch(tmp_path / "a.mp4")
    assert jobs_from_paths([tmp_path], dataset="charades").fps == float(get_preset("charades").fps)
    assert jobs_from_paths([tmp_path], dataset="charades", fps=2.0).fps == 2.0
    assert preset_fps(None) == 0.5 and preset_fps("youtube") is None
    with pytest.raises(InputError, match="samples per video"):
        jobs_from_paths([tmp_path], dataset="youtube")
    with pytest.raises(InputError, match="no inputs"):
        jobs_from_paths([])


def test_one_path_is_a_list_of_one_not_its_characters(tmp_path):
    """``jobs_from_paths("videos")`` walked the string character by character ("v: no such file
    or folder") and a Path gave a bare TypeError; one path is now the list of it."""
    touch(tmp_path / "videos" / "a.mp4")
    anno = tmp_path / "val.jsonl"
    anno.write_text(json.dumps({"qid": 1, "query": "a dog", "duration": 4.0, "vid": "a",
                                "relevant_windows": [[0, 2]]}) + "\n")
    for one in (str(tmp_path / "videos"), tmp_path / "videos"):
        assert [j.video_id for j in jobs_from_paths(one).videos] == ["a"]
        assert [j.video_id for j in jobs_from_annotations(anno, one).videos] == ["a"]
    with pytest.raises(InputError, match="^expected a path or a list of paths, got int$"):
        jobs_from_paths(3)


def test_two_files_with_one_id_are_refused_naming_both(tmp_path):
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "a.mkv")
    with pytest.raises(InputError, match="two videos get the id 'a'.*same name, different extension"):
        jobs_from_paths([tmp_path])


def test_annotations_give_their_videos_and_each_query_once(tmp_path):
    anno = FIXTURES / "charades" / "charades_sta_synthetic.txt"
    vids = sorted({line.split()[0] for line in anno.read_text().splitlines() if line.strip()})
    for vid in vids[1:]:
        touch(tmp_path / "videos" / f"{vid}.mp4")
    jobs = jobs_from_annotations(anno, [tmp_path / "videos"])
    assert jobs.dataset == "charades" and jobs.fps == float(get_preset("charades").fps)
    assert [j.video_id for j in jobs.videos] == vids[1:]
    assert [(f.video_id, f.reason) for f in jobs.failures] == [
        (vids[0], f"no video file named {vids[0]}.* under {tmp_path / 'videos'}")]
    texts = [q.text for q in jobs.queries]
    assert len(texts) == len({q.query_id for q in jobs.queries}) > 0
    with pytest.raises(InputError, match="give the folder"):
        jobs_from_annotations(anno, [])
    with pytest.raises(InputError, match="no such folder"):
        jobs_from_annotations(anno, [tmp_path / "missing"])


def test_youtube_videos_get_their_own_rate_and_clip_count(tmp_path):
    anno = FIXTURES / "youtube" / "youtube_anno_synthetic.json"
    source = json.loads(anno.read_text())
    for vid in source:
        touch(tmp_path / f"{vid}.mp4")
    jobs = jobs_from_annotations(anno, [tmp_path])
    assert jobs.dataset == "youtube" and jobs.fps is None
    for job in jobs.videos:
        rec = source[job.video_id]
        assert job.num_clips == len(rec["match"])
        assert job.fps == pytest.approx(len(rec["match"]) * rec["fps"] / float(rec["frames"]))
    with pytest.raises(InputError, match="drop --fps"):
        jobs_from_annotations(anno, [tmp_path], fps=1.0)
