"""r2.train.annotations: every layout on its example files, rows, detection, errors.

Fixtures (tests/fixtures/, see its README for provenance and licences): the real
QVHighlights files and synthetic original-layout examples of the other five data sets.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from r2.train.annotations import (
    AnnotationError,
    GroundingSample,
    Saliency,
    canonical_dataset,
    detect_dataset,
    detect_layout,
    load_annotations,
    samples_to_rows,
    write_jsonl,
)
from r2.train.splits import TVSUM_SPLITS, YOUTUBE_SPLITS

FIX = Path(__file__).resolve().parents[1] / "fixtures"
QVH = FIX / "qvhighlights"
QVH_FILES = {
    "highlight_train_release.jsonl": (7218, "train"),
    "highlight_val_release.jsonl": (1550, "val"),
    "highlight_test_release.jsonl": (1542, "test"),
    "highlight_test_with_gt.jsonl": (1542, "test"),
}
CHARADES_TXT = FIX / "charades" / "charades_sta_synthetic.txt"
CHARADES_CSV = FIX / "charades" / "charades_lengths_synthetic.csv"
CHARADES_JSONL = FIX / "charades" / "charades_synthetic.jsonl"
TACOS_JSON = FIX / "tacos" / "tacos_2dtan_synthetic.json"
TACOS_JSONL = FIX / "tacos" / "tacos_synthetic.jsonl"
EGO_JSON = FIX / "ego4d" / "nlq_synthetic_official_layout.json"
EGO_JSONL = FIX / "ego4d" / "nlq_synthetic.jsonl"
YT_JSON = FIX / "youtube" / "youtube_anno_synthetic.json"
TV_JSON = FIX / "tvsum" / "tvsum_anno_synthetic.json"

ALL_FILES = [QVH / name for name in QVH_FILES] + [
    CHARADES_TXT, CHARADES_JSONL, TACOS_JSON, TACOS_JSONL, EGO_JSON, EGO_JSONL, YT_JSON, TV_JSON]


def core(sample: GroundingSample):
    return (sample.qid, sample.vid, sample.query, sample.duration, sample.relevant_windows)


@pytest.fixture(scope="module")
def qvh():
    return {name: load_annotations(QVH / name) for name in QVH_FILES}


def raises_at(path, line, *fragments, **kwargs):
    """Context: an AnnotationError whose message starts with path:line and has fragments."""

    class _Ctx:
        def __enter__(self):
            self.info = pytest.raises(AnnotationError)
            self.excinfo = self.info.__enter__()
            return self.excinfo

        def __exit__(self, *exc):
            handled = self.info.__exit__(*exc)
            message = str(self.excinfo.value)
            prefix = f"{path}:{line}:" if line is not None else f"{path}:"
            assert message.startswith(prefix), message
            for fragment in fragments:
                assert fragment in message, message
            assert self.excinfo.value.user_error is True
            return handled

    return _Ctx()


# ---------------------------------------------------------------------------------------------
# QVHighlights (real files)


@pytest.mark.parametrize("name", list(QVH_FILES))
def test_qvhighlights_counts_splits_and_detection(qvh, name):
    count, split = QVH_FILES[name]
    samples = qvh[name]
    assert len(samples) == count
    assert detect_dataset(QVH / name) == "qvhighlights"
    assert {s.split for s in samples} == {split}
    assert {s.dataset for s in samples} == {"qvhighlights"}
    assert all(type(s.qid) is int for s in samples)
    assert all(type(s.duration) is int for s in samples)  # written as ints, kept as ints
    assert len({s.qid for s in samples}) == count


def test_qvhighlights_labels(qvh):
    val = qvh["highlight_val_release.jsonl"]
    first = val[0]
    assert first.qid == 2579 and first.vid == "NUsG9BgSes0_210.0_360.0"
    assert first.relevant_windows == [(82, 150)]
    assert first.saliency.scale == (0, 4)
    assert first.saliency.num_annotators == 3
    assert first.saliency.clip_ids.tolist() == list(range(41, 75))
    assert first.saliency.scores.dtype == np.int64
    assert first.saliency.clip_times is None
    assert sum(len(s.relevant_windows) for s in val) == 2803
    blind = qvh["highlight_test_release.jsonl"]
    assert all(not s.labelled and s.saliency is None and s.relevant_windows == [] for s in blind)
    with_gt = qvh["highlight_test_with_gt.jsonl"]
    assert [s.qid for s in with_gt] == [s.qid for s in blind]
    assert all(s.labelled and s.saliency is not None for s in with_gt)


@pytest.mark.parametrize("name", list(QVH_FILES))
def test_qvhighlights_to_row_gives_back_each_line_byte_for_byte(qvh, name):
    lines = (QVH / name).read_text(encoding="utf-8").split("\n")
    lines = [l for l in lines if l.strip()]
    rows = samples_to_rows(qvh[name])
    assert len(rows) == len(lines)
    for row, line in zip(rows, lines):
        assert row == json.loads(line)
        assert json.dumps(row) == line


@pytest.mark.parametrize("name", list(QVH_FILES))
def test_qvhighlights_from_row_round_trip(qvh, name):
    for s in qvh[name]:
        back = GroundingSample.from_row(s.to_row(), dataset=s.dataset, split=s.split)
        assert back == s


def test_qvhighlights_score_outside_scale_is_an_error(tmp_path):
    line = json.loads((QVH / "highlight_val_release.jsonl").read_text().split("\n")[0])
    line["saliency_scores"][3] = [1, 5, 2]
    path = tmp_path / "highlight_val_release.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with raises_at(path, 1, "5", "[0, 4]"):
        load_annotations(path)


# ---------------------------------------------------------------------------------------------
# Charades-STA


def test_charades_jsonl():
    samples = load_annotations(CHARADES_JSONL)
    assert detect_dataset(CHARADES_JSONL) == "charades"
    assert [s.qid for s in samples] == [0, 1, 2, 3]
    assert samples[1].relevant_windows == [(24.3, 30.96)]  # end already clipped to duration
    assert all(s.saliency is None and s.dataset == "charades" for s in samples)
    lines = [l for l in CHARADES_JSONL.read_text().split("\n") if l.strip()]
    assert [json.dumps(s.to_row()) for s in samples] == lines


def test_charades_tall_text_converts_exactly_like_the_jsonl():
    assert detect_layout(CHARADES_TXT) == "tall"
    assert detect_dataset(CHARADES_TXT) == "charades"
    tall = load_annotations(CHARADES_TXT, lengths=CHARADES_CSV)
    jsonl = load_annotations(CHARADES_JSONL)
    # line 4 (start 9.0 > end 4.0) is dropped; qids keep counting over the kept lines;
    # line 2's end 31.5 is clipped to the 30.96-s length
    assert [core(s) for s in tall] == [core(s) for s in jsonl]
    assert [s.origin.rsplit(":", 1)[1] for s in tall] == ["1", "2", "3", "5"]
    assert tall[1].relevant_windows == [(24.3, 30.96)]


def test_charades_tall_options(tmp_path):
    # the lengths csv next to the file is found on its own (single *length*.csv)
    auto = load_annotations(CHARADES_TXT)
    assert [core(s) for s in auto] == [core(s) for s in load_annotations(CHARADES_JSONL)]
    # a mapping works too, and qid_start shifts the ids (R²-Tuning's test file starts at 12404)
    shifted = load_annotations(CHARADES_TXT, lengths={"SYN01": 30.96, "SYN02": 12.17,
                                                      "SYN03": 44.5}, qid_start=12404)
    assert [s.qid for s in shifted] == [12404, 12405, 12406, 12407]
    with raises_at(CHARADES_TXT, 4, "start > end"):
        load_annotations(CHARADES_TXT, lengths=CHARADES_CSV, reversed_windows="error")
    lonely = tmp_path / "charades_sta_train.txt"
    shutil.copy(CHARADES_TXT, lonely)
    with pytest.raises(AnnotationError, match="put Charades_v1_train.csv .* next to this file"):
        load_annotations(lonely)
    with raises_at(lonely, 1, "no length"):
        load_annotations(lonely, lengths={"SYN02": 12.17})
    assert {s.split for s in load_annotations(lonely, lengths=CHARADES_CSV)} == {"train"}


def test_charades_tall_malformed_lines(tmp_path):
    path = tmp_path / "sta.txt"
    cases = [
        ("SYN01 0.0 6.9 a person opens the door.", "missing '##'"),
        ("SYN01 0.0##a person opens the door.", "expected '<vid> <start> <end>'"),
        ("SYN01 0.0 x##a person opens the door.", "must be numbers"),
        ("SYN01 -1.0 2.0##a person opens the door.", "before 0"),
    ]
    for bad, fragment in cases:
        path.write_text("SYN02 1.2 7.8##the person sits on a chair.\n" + bad + "\n")
        with raises_at(path, 2, fragment):
            load_annotations(path, lengths=CHARADES_CSV)
    csv = tmp_path / "lengths.csv"
    csv.write_text("id,length\nSYN02,abc\n")
    path.write_text("SYN02 1.2 7.8##the person sits on a chair.\n")
    with raises_at(csv, 2, "'length' must be a number"):
        load_annotations(path, lengths=csv)


# ---------------------------------------------------------------------------------------------
# TACoS


def test_tacos_2dtan_converts_exactly_like_the_jsonl():
    assert detect_layout(TACOS_JSON) == "tan2d"
    assert detect_dataset(TACOS_JSON) == "tacos"
    assert detect_dataset(TACOS_JSONL) == "tacos"
    tan = load_annotations(TACOS_JSON)
    rows = load_annotations(TACOS_JSONL)
    assert tan == rows  # frames ÷ 29.4, duration = num_frames ÷ fps, end clipped
    assert [s.qid for s in tan][:4] == ["s91-d01_0", "s91-d01_1", "s91-d01_2", "s91-d01_3"]
    last = tan[3]  # end frame 7400 > num_frames 7346: clipped to the duration
    assert last.relevant_windows[0][1] == last.duration == 7346 / 29.4


def test_tacos_keeps_vid_and_records_the_video_file_stem():
    for s in load_annotations(TACOS_JSONL):
        assert not s.vid.endswith("-cam-002")
        assert s.extras["video_file_stem"] == s.vid + "-cam-002" == s.video_file_stem
    lines = [l for l in TACOS_JSONL.read_text().split("\n") if l.strip()]
    assert [json.dumps(s.to_row(extras=False)) for s in load_annotations(TACOS_JSONL)] == lines


def test_tacos_2dtan_malformed(tmp_path):
    doc = json.loads(TACOS_JSON.read_text())
    doc["s92-d02.avi"]["sentences"].append("one sentence too many")
    path = tmp_path / "test.json"
    path.write_text(json.dumps(doc, indent=1))
    line = path.read_text().split("\n").index(' "s92-d02.avi": {') + 1
    with raises_at(path, line, "s92-d02.avi", "2 timestamps but 3 sentences"):
        load_annotations(path)


# ---------------------------------------------------------------------------------------------
# Ego4D-NLQ


def test_ego4d_jsonl_keeps_the_quirks():
    samples = load_annotations(EGO_JSONL)
    assert detect_dataset(EGO_JSONL) == "ego4d"
    assert [s.qid for s in samples] == [f"train{i}" for i in range(5)]
    assert {s.split for s in samples} == {"train"}  # from the qids
    zero = samples[2]
    assert zero.relevant_windows == [(77.31, 77.31)]  # zero length, kept
    past = samples[3]
    assert past.relevant_windows[0][1] > past.duration  # ends after the clip, kept
    assert samples[0].extras == {"video_uid": "00000000-0000-4000-8000-000000000001"}
    lines = [l for l in EGO_JSONL.read_text().split("\n") if l.strip()]
    assert [json.dumps(s.to_row()) for s in samples] == lines


def test_ego4d_official_layout_converts_like_the_jsonl():
    assert detect_layout(EGO_JSON) == "ego4d_nlq"
    assert detect_dataset(EGO_JSON) == "ego4d"
    official = load_annotations(EGO_JSON, split="train")
    rows = load_annotations(EGO_JSONL)
    assert [core(s) for s in official] == [core(s) for s in rows]
    assert [s.extras["video_uid"] for s in official] == [s.extras["video_uid"] for s in rows]
    assert [s.extras["query_idx"] for s in official] == [0, 1, 2, 0, 0]
    assert official[0].extras["clip_uid"] == official[0].vid
    assert official[0].extras["annotation_uid"] == "00000000-0000-4000-8000-000000000900"
    # without a split in the name or the arguments the qids get the "nlq" prefix
    assert load_annotations(EGO_JSON)[0].qid == "nlq0"


def test_ego4d_official_skips_queries_without_text_and_reads_unannotated(tmp_path):
    doc = json.loads(EGO_JSON.read_text())
    queries = doc["videos"][0]["clips"][0]["annotations"][0]["language_queries"]
    del queries[1]["query"]
    queries[2]["query"] = ""
    for entry in doc["videos"][1]["clips"][0]["annotations"][0]["language_queries"]:
        del entry["clip_start_sec"], entry["clip_end_sec"]
    path = tmp_path / "nlq_val.json"
    path.write_text(json.dumps(doc, indent=1))
    samples = load_annotations(path)
    assert [s.qid for s in samples] == ["val0", "val1", "val2"]
    assert [s.extras["query_idx"] for s in samples] == [0, 0, 0]
    unannotated = samples[1]
    assert not unannotated.labelled and unannotated.relevant_windows == []
    assert "relevant_windows" not in unannotated.to_row()


def test_ego4d_official_malformed(tmp_path):
    doc = json.loads(EGO_JSON.read_text())
    doc["videos"][2]["clips"][0]["video_end_sec"] = 2000.0  # before video_start_sec 3000
    path = tmp_path / "nlq_train.json"
    text = json.dumps(doc, indent=1)
    path.write_text(text)
    line = text[:text.index('"clip_uid": "00000000-0000-4000-8000-000000000103"')].count("\n") + 1
    with raises_at(path, line, "videos[2].clips[0]", "not after video_start_sec"):
        load_annotations(path)


# ---------------------------------------------------------------------------------------------
# YouTube Highlights


def test_youtube_anno():
    assert detect_layout(YT_JSON) == "youtube_anno"
    assert detect_dataset(YT_JSON) == "youtube"
    samples = load_annotations(YT_JSON)
    assert [s.vid for s in samples] == ["SYNyt000001", "SYNyt000002", "SYNyt000003"]
    first = samples[0]
    assert first.qid == first.vid and first.domain == "dog"
    assert first.query == "Dock jumping practice with my dog"  # info[5]
    assert first.duration == 650 / 29.97
    assert first.relevant_windows == []
    sal = first.saliency
    assert sal.scale == (-1, 1) and sal.num_annotators == 1
    assert sal.scores[:, 0].tolist() == [-1, -1, -1, 0, 1, 1, 1, 0, -1, -1, -1, -1]
    assert sal.clip_ids.tolist() == list(range(12))
    np.testing.assert_allclose(sal.clip_times[1], [50 / 29.97, 150 / 29.97])
    assert first.extras["frames"] == "650"  # a string, as written
    # quirks: an empty title, a video without any positive clip
    assert samples[2].query == ""
    assert (samples[2].saliency.scores <= 0).all()
    # synthetic ids are in no split list
    assert {s.split for s in samples} == {"unlisted"}
    domain_words = load_annotations(YT_JSON, query_source="domain")
    assert [s.query for s in domain_words] == ["dog", "surfing", "dog"]


def test_youtube_row_is_the_contract_row():
    row = load_annotations(YT_JSON)[1].to_row()
    assert row["qid"] == row["vid"] == "SYNyt000002"
    assert row["query"] == "Morning surf session"
    assert row["domain"] == "surfing"
    assert row["relevant_windows"] == []
    assert row["relevant_clip_ids"] == list(range(8))
    assert row["saliency_scores"] == [[-1], [0], [1], [1], [-1], [-1], [0], [1]]
    assert "saliency_scale" not in row  # inferred back from domain + one annotator


def _highlight_file(tmp_path, source: Path, ids: list[str], domain_key: str) -> Path:
    """Synthetic entries renamed to real split ids (to exercise the split lists)."""
    doc = json.loads(source.read_text())
    entries = list(doc.values())
    out = {}
    for i, (vid, domain) in enumerate(ids):
        entry = dict(entries[i % len(entries)])
        entry[domain_key] = domain
        out[vid] = entry
    path = tmp_path / source.name
    path.write_text(json.dumps(out))
    return path


def test_youtube_split_and_domain_selection(tmp_path):
    ids = [(YOUTUBE_SPLITS["dog"]["train"][0], "dog"), (YOUTUBE_SPLITS["dog"]["val"][0], "dog"),
           (YOUTUBE_SPLITS["surfing"]["train"][0], "surfing"), ("SYNnotlisted", "dog")]
    path = _highlight_file(tmp_path, YT_JSON, ids, "domain")
    every = load_annotations(path)
    assert [s.split for s in every] == ["train", "val", "train", "unlisted"]
    train = load_annotations(path, split="train")
    assert [s.vid for s in train] == [ids[0][0], ids[2][0]]
    dog_val = load_annotations(path, domain="Dog", split="val")
    assert [s.vid for s in dog_val] == [ids[1][0]]
    with pytest.raises(AnnotationError, match="unknown youtube domain 'cats'"):
        load_annotations(path, domain="cats")
    with pytest.raises(AnnotationError, match="must be 'train', 'val' or 'all'"):
        load_annotations(path, split="test")
    assert load_annotations(path, split="all") == every
    with pytest.raises(AnnotationError, match="no youtube video of the val list"):
        load_annotations(path, domain="surfing", split="val")


def test_highlight_videos_come_in_the_order_of_their_split_lists(tmp_path):
    """Each domain's train and val videos in their split list's order (the reference's data
    set order, in which its evaluation sums the per-video APs), in the places of the file
    they held; other domains' and unlisted videos stay where they were."""
    dog_val, dog_train = YOUTUBE_SPLITS["dog"]["val"], YOUTUBE_SPLITS["dog"]["train"]
    ids = [(dog_val[2], "dog"), ("SYNnotlisted", "dog"), (dog_train[1], "dog"), (dog_val[0], "dog"),
           (YOUTUBE_SPLITS["surfing"]["val"][1], "surfing"), (dog_train[0], "dog"),
           (YOUTUBE_SPLITS["surfing"]["val"][0], "surfing"), (dog_val[1], "dog")]
    path = _highlight_file(tmp_path, YT_JSON, ids, "domain")
    assert [s.vid for s in load_annotations(path)] == [
        dog_val[0], "SYNnotlisted", dog_train[0], dog_val[1], YOUTUBE_SPLITS["surfing"]["val"][0],
        dog_train[1], YOUTUBE_SPLITS["surfing"]["val"][1], dog_val[2]]
    assert [s.vid for s in load_annotations(path, domain="dog", split="val")] == list(dog_val[:3])


def test_youtube_malformed(tmp_path):
    doc = json.loads(YT_JSON.read_text())
    doc["SYNyt000002"]["match"] = doc["SYNyt000002"]["match"][:-1]
    path = tmp_path / "youtube_anno.json"
    text = json.dumps(doc, indent=1)
    path.write_text(text)
    line = text[:text.index('"SYNyt000002"')].count("\n") + 1
    with raises_at(path, line, "video 'SYNyt000002'", "'clip' has 8 entries but there are 7"):
        load_annotations(path)
    doc = json.loads(YT_JSON.read_text())
    doc["SYNyt000001"]["match"][0] = 2
    path.write_text(json.dumps(doc))
    with raises_at(path, 1, "match[0] must be -1, 0 or 1"):
        load_annotations(path)


# ---------------------------------------------------------------------------------------------
# TVSum


def test_tvsum_anno():
    assert detect_layout(TV_JSON) == "tvsum_anno"
    assert detect_dataset(TV_JSON) == "tvsum"
    samples = load_annotations(TV_JSON)
    first = samples[0]
    assert first.qid == first.vid == "SYNtv000001"
    assert first.query == "How to change a flat tire (synthetic)"
    assert first.domain == "VT"
    assert first.duration == 1800 / 29.97002997002997
    assert first.saliency.scale == (1, 5)
    assert first.saliency.scores.shape == (30, 20)
    assert first.saliency.scores.dtype == np.float64
    assert first.saliency.clip_times is None
    # T = floor(frames / fps / 2) rows, as the file was built
    assert first.saliency.num_clips == int(1800 / 29.97002997002997 / 2)
    row = first.to_row()
    assert row["relevant_windows"] == [] and row["relevant_clip_ids"] == list(range(30))
    assert len(row["saliency_scores"][0]) == 20 and row["saliency_scores"][0][0] == 1.0
    assert row["domain"] == "VT" and "saliency_scale" not in row


def test_tvsum_split_and_domain_selection(tmp_path):
    ids = [(TVSUM_SPLITS["VT"]["train"][0], "VT"), (TVSUM_SPLITS["VT"]["val"][0], "VT"),
           (TVSUM_SPLITS["BK"]["val"][0], "BK")]
    path = _highlight_file(tmp_path, TV_JSON, ids, "domain")
    assert [s.split for s in load_annotations(path)] == ["train", "val", "val"]
    assert [s.vid for s in load_annotations(path, domain="vt", split="val")] == [ids[1][0]]
    assert [s.vid for s in load_annotations(path, split="val")] == [ids[1][0], ids[2][0]]
    with pytest.raises(AnnotationError, match="choose one of BK, BT"):
        load_annotations(path, domain="XX")


def test_tvsum_malformed(tmp_path):
    doc = json.loads(TV_JSON.read_text())
    doc["SYNtv000002"]["anno"][4][7] = 6.0
    path = tmp_path / "tvsum_anno.json"
    text = json.dumps(doc, indent=1)
    path.write_text(text)
    line = text[:text.index('"SYNtv000002"')].count("\n") + 1
    with raises_at(path, line, "video 'SYNtv000002'", "6.0", "1–5"):
        load_annotations(path)
    doc = json.loads(TV_JSON.read_text())
    doc["SYNtv000001"]["anno"][2] = doc["SYNtv000001"]["anno"][2][:19]
    path.write_text(json.dumps(doc))
    with raises_at(path, 1, "anno[2] has 19 scores"):
        load_annotations(path)


# ---------------------------------------------------------------------------------------------
# rows, custom data, round trips


@pytest.mark.parametrize("path", ALL_FILES[4:], ids=lambda p: p.name)  # QVHighlights: above
def test_to_row_from_row_round_trip_on_every_example(path):
    samples = load_annotations(path)
    for s in samples:
        row = s.to_row()
        json.dumps(row)  # JSON-native
        assert GroundingSample.from_row(row, dataset=s.dataset, split=s.split) == s


@pytest.mark.parametrize("path", [YT_JSON, TV_JSON, TACOS_JSON, EGO_JSON, CHARADES_TXT],
                         ids=lambda p: p.name)
def test_rows_written_as_jsonl_load_back_as_the_same_records(tmp_path, path):
    samples = load_annotations(path)
    out = write_jsonl(samples, tmp_path / "rows.jsonl")
    dataset = samples[0].dataset
    assert detect_dataset(out) == dataset
    back = load_annotations(out, split=None if dataset in ("youtube", "tvsum") else samples[0].split)
    assert back == samples


def test_custom_jsonl(tmp_path):
    rows = [
        {"qid": "a", "vid": "kitchen_01", "query": "someone opens the fridge", "duration": 31.5,
         "relevant_windows": [[2.0, 6.5], [20, 24]]},
        {"qid": "b", "vid": "kitchen_01", "query": "someone pours milk", "duration": 31.5,
         "relevant_windows": [[8, 12]], "relevant_clip_ids": [4, 5], "saliency_scores": [[3], [1]],
         "saliency_scale": [0, 3], "camera": "front"},
    ]
    path = tmp_path / "my_videos.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))  # no final newline
    assert detect_dataset(path) == "custom"
    samples = load_annotations(path, split="train")
    assert [s.dataset for s in samples] == ["custom", "custom"]
    assert samples[0].relevant_windows == [(2.0, 6.5), (20, 24)] and samples[0].saliency is None
    assert samples[1].saliency.scale == (0, 3)
    assert samples[1].extras == {"camera": "front"}
    assert samples[1].to_row() == {**rows[1], "relevant_windows": [[8, 12]]}
    as_array = tmp_path / "rows.json"
    as_array.write_text(json.dumps(rows))
    assert detect_layout(as_array) == "json_rows"
    assert load_annotations(as_array, split="train") == samples


def test_detection_is_by_content_not_by_name(tmp_path):
    misleading = tmp_path / "charades_test.jsonl"
    shutil.copy(EGO_JSONL, misleading)
    assert detect_dataset(misleading) == "ego4d"
    plain = tmp_path / "data.jsonl"
    shutil.copy(CHARADES_JSONL, plain)
    assert detect_dataset(plain) == "charades"
    renamed = tmp_path / "queries.dat"
    shutil.copy(CHARADES_TXT, renamed)
    assert detect_dataset(renamed) == "charades"
    for source in (TACOS_JSON, YT_JSON, TV_JSON, EGO_JSON):
        anonymous = tmp_path / "annotations.json"
        shutil.copy(source, anonymous)
        assert detect_dataset(anonymous) == detect_dataset(source)
    qvh_named_tacos = tmp_path / "tacos_train.jsonl"
    qvh_named_tacos.write_text((QVH / "highlight_val_release.jsonl").read_text()[:200000]
                               .rsplit("\n", 1)[0])
    assert detect_dataset(qvh_named_tacos) == "qvhighlights"
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(CHARADES_JSONL.read_text() + EGO_JSONL.read_text())
    assert detect_dataset(mixed) == "custom"


def test_explicit_dataset_and_layout_must_agree():
    with pytest.raises(AnnotationError, match="YouTube Highlights youtube_anno.json file"):
        load_annotations(YT_JSON, dataset="tvsum")
    # rows may be given any data set
    as_custom = load_annotations(CHARADES_JSONL, dataset="custom")
    assert {s.dataset for s in as_custom} == {"custom"}
    assert canonical_dataset("Charades-STA") == "charades" == canonical_dataset("charades_sta")
    with pytest.raises(AnnotationError, match="unknown dataset 'kinetics'"):
        load_annotations(CHARADES_JSONL, dataset="kinetics")
    with pytest.raises(AnnotationError, match="do not apply"):
        load_annotations(CHARADES_JSONL, lengths=CHARADES_CSV)
    with pytest.raises(AnnotationError, match="valid options: query_source"):
        load_annotations(YT_JSON, lengths=CHARADES_CSV)


# ---------------------------------------------------------------------------------------------
# malformed rows → file:line


GOOD = {"qid": 7, "query": "a dog runs", "duration": 150, "vid": "abcdefghijk_0.0_150.0",
        "relevant_clip_ids": [3, 4], "saliency_scores": [[1, 2, 3], [4, 4, 4]],
        "relevant_windows": [[6, 10]]}


def _with(**changes):
    row = dict(GOOD)
    for key, value in changes.items():
        if value is KeyError:
            row.pop(key)
        else:
            row[key] = value
    return json.dumps(row)


MALFORMED = [
    ('{"qid": 8, "query": "x", ', "invalid JSON"),
    ("[1, 2, 3]", "expected a JSON object"),
    (_with(vid=KeyError), "missing key 'vid'"),
    (_with(duration=KeyError), "missing key 'duration'"),
    (_with(qid=7.5), "'qid' must be an int or a non-empty string"),
    (_with(qid=True), "'qid' must be an int"),
    (_with(vid=""), "'vid' must be a non-empty string"),
    (_with(query=None), "'query' must be a string"),
    (_with(duration="150"), "'duration' must be a number"),
    (_with(duration=0), "'duration' must be > 0"),
    (_with(relevant_windows=[[10, 6]]), "has start > end"),
    (_with(relevant_windows=[[-2, 6]]), "starts before 0"),
    (_with(relevant_windows=[[6]]), "relevant_windows[0] must be [start, end]"),
    (_with(relevant_windows=[[6, "10"]]), "relevant_windows[0] end must be a number"),
    (_with(relevant_windows="6-10"), "'relevant_windows' must be a list"),
    (_with(saliency_scores=KeyError), "'relevant_clip_ids' without 'saliency_scores'"),
    (_with(relevant_clip_ids=[3]), "'relevant_clip_ids' has 1 entries but 'saliency_scores' has 2"),
    (_with(relevant_clip_ids=[3, 3]), "lists clip 3 twice"),
    (_with(relevant_clip_ids=[3, -4]), "relevant_clip_ids[1] must be an integer >= 0"),
    (_with(saliency_scores=[[1, 2, 3], [4, 4]]), "saliency_scores[1] has 2 scores"),
    (_with(saliency_scores=[[1, 2, 3], 4]), "saliency_scores[1] must be a non-empty list"),
    (_with(saliency_scores=[[1, 2, 3], [4, 4, 9]]), "outside the raw scale"),
]


@pytest.mark.parametrize("bad,fragment", MALFORMED, ids=[f for _, f in MALFORMED])
def test_malformed_row_names_file_and_line(tmp_path, bad, fragment):
    path = tmp_path / "highlight_val_release.jsonl"
    good2 = _with(qid=8)
    path.write_text("\n".join([json.dumps(GOOD), good2, bad, good2.replace("8", "9", 1)]))
    with raises_at(path, 3, fragment):
        load_annotations(path, dataset="qvhighlights")


def test_custom_windows_outside_the_video_name_the_line(tmp_path):
    """Custom data: a window past the end of its video (milliseconds or frames for seconds,
    another video's times) is refused with its line; a rounding overhang is kept, and the
    benchmark layouts keep their windows as published."""
    path = tmp_path / "train.jsonl"
    row = {"qid": 1, "vid": "v", "query": "x", "duration": 5.312}
    for windows, fragment in (([[0.0, 40.0]], "relevant_windows[0] [0.0, 40.0] ends well after the duration "
                                              "5.312 s"),
                              ([[6.0, 6.5]], "[6.0, 6.5] starts at or after the duration 5.312 s")):
        path.write_text(json.dumps({"qid": 0, "vid": "v", "query": "y", "duration": 5.312,
                                    "relevant_windows": [[0, 2]]}) + "\n"
                        + json.dumps(dict(row, relevant_windows=windows)) + "\n")
        with raises_at(path, 2, fragment):
            load_annotations(path, dataset="custom")
    path.write_text(json.dumps(dict(row, relevant_windows=[[4.0, 6.0]])) + "\n")  # 0.7 s over: a grid
    assert load_annotations(path, dataset="custom")[0].relevant_windows == [(4.0, 6.0)]
    path.write_text(json.dumps(dict(row, relevant_windows=[[0.0, 40.0]])) + "\n")
    assert load_annotations(path, dataset="charades")[0].relevant_windows == [(0.0, 40.0)]


def test_duplicate_qid_names_both_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join([json.dumps(GOOD), _with(qid=8), json.dumps(GOOD)]) + "\n")
    with raises_at(path, 3, "duplicate qid 7 (first at line 1)"):
        load_annotations(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(AnnotationError, match="no such file"):
        load_annotations(tmp_path / "missing.jsonl")
    with pytest.raises(AnnotationError, match="is a directory"):
        load_annotations(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(AnnotationError, match="empty annotation file"):
        load_annotations(empty)
    binary = tmp_path / "bad.jsonl"
    binary.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe\n")
    with raises_at(binary, 2, "not UTF-8"):
        load_annotations(binary)
    with pytest.raises(AnnotationError, match="lengths table"):
        load_annotations(CHARADES_CSV)
    weird = tmp_path / "weird.json"
    weird.write_text('{"a": 1, "b": 2}')
    with pytest.raises(AnnotationError, match="unrecognised annotation layout"):
        detect_dataset(weird)


def test_jsonl_is_read_like_r2_score_reads_it(tmp_path):
    """One reader for every room (r2.evaluate.read_jsonl): CRLF, a missing final newline and a
    UTF-8 byte-order mark (some editors write one) are fine; a blank line is an error at its
    line."""
    path = tmp_path / "rows.jsonl"
    path.write_bytes((json.dumps(GOOD) + "\r\n" + _with(qid=8)).encode())
    assert [s.qid for s in load_annotations(path)] == [7, 8]
    path.write_text(json.dumps(GOOD) + "\n\n" + _with(qid=8) + "\n")
    with raises_at(path, 2, "blank line"):
        load_annotations(path)
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GOOD) + "\n").encode())
    assert [s.qid for s in load_annotations(path)] == [7]


# ---------------------------------------------------------------------------------------------
# the record itself


def test_records_are_immutable_and_hashable():
    s = load_annotations(YT_JSON)[0]
    with pytest.raises(Exception):
        s.qid = 3
    with pytest.raises(ValueError):
        s.saliency.scores[0, 0] = 5  # read-only arrays
    assert len({s, GroundingSample.from_row(s.to_row(), dataset="youtube", split=s.split)}) == 1
    assert s.query_id == "SYNyt000001"


def test_saliency_dense_and_validation():
    sal = Saliency(np.array([1, 3]), np.array([[1, 2, 3], [4, 4, 4]]), (0, 4))
    np.testing.assert_array_equal(sal.dense(3), [[0, 0, 0], [1, 2, 3], [0, 0, 0]])
    assert sal == Saliency([1, 3], [[1, 2, 3], [4, 4, 4]], (0, 4))
    assert sal != Saliency([1, 3], [[1, 2, 3], [4, 4, 4]], (0, 5))
    with pytest.raises(ValueError):
        Saliency([1, 3], [[1, 2, 3]], (0, 4))
    with pytest.raises(ValueError):
        Saliency([1], [[1]], (4, 0))
    assert "M=2, A=3" in repr(sal)


def test_from_row_error_has_no_location_but_is_user_error():
    with pytest.raises(AnnotationError, match="missing key 'query'") as info:
        GroundingSample.from_row({"qid": 1, "vid": "v", "duration": 3})
    assert info.value.user_error


def test_split_lists_module_matches_the_shipped_json():
    """r2.train.splits was generated from splits.json (BSD-3, notice in its docstring)."""
    import r2.train.splits as splits

    for module_lists, name in ((YOUTUBE_SPLITS, "youtube"), (TVSUM_SPLITS, "tvsum")):
        shipped = json.loads((FIX / name / "splits.json").read_text())["splits"]
        assert {d: {k: list(v) for k, v in parts.items()} for d, parts in module_lists.items()} \
            == shipped
    assert "BSD 3-Clause" in splits.__doc__ and "Copyright (c) 2024, Ye Liu" in splits.__doc__
    assert [len(YOUTUBE_SPLITS[d]["train"]) for d in YOUTUBE_SPLITS] == [44, 34, 21, 24, 68, 56]
    assert all(len(p["train"]) == 4 and len(p["val"]) == 1 for p in TVSUM_SPLITS.values())
