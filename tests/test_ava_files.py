"""AVA's file formats: label maps, box CSVs, exclusions and PySlowFast frame lists."""
from pathlib import Path

import pytest

from vislab.data.datasets.ava_files import (ActorBox, Detection, ScoredBox, read_annotations, read_detections,
                                            read_exclusions, read_frame_list, read_label_map, read_proposals,
                                            timestamp_to_frame, write_detections)
from vislab.data.datasets.image_folder import DataError

LABEL_MAP = '''item {
  name: "bend/bow (at the waist)"
  id: 1
}
item {
  name: "crawl"
  id: 2
}
item {
  name: "dance"
  id: 11
}
'''


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- label maps -------------------------------------------------------------------------------------

def test_label_map_in_file_order(tmp_path):
    label_map = read_label_map(write(tmp_path, "actions.pbtxt", LABEL_MAP))
    assert label_map.names == {1: "bend/bow (at the waist)", 2: "crawl", 11: "dance"}
    assert label_map.ids == [1, 2, 11]
    assert label_map.path == tmp_path / "actions.pbtxt"


def test_label_map_with_label_id_and_label_type(tmp_path):
    text = ('item {\n  name: "stand"\n  label_id: 12\n  label_type: PERSON_MOVEMENT\n}\n'
            'item {\n  name: "sit"\n  label_id: 11\n  label_type: PERSON_MOVEMENT\n}\n')
    assert read_label_map(write(tmp_path, "v2.2.pbtxt", text)).names == {12: "stand", 11: "sit"}


@pytest.mark.parametrize("text, message", [
    ('item {\n  name: "a"\n  id 1\n}\n', "line 3: cannot parse"),
    ('item {\n  id: 1\n}\n', "line 1: the item has no name"),
    ('item {\n  name: "a"\n}\n', "line 1: the item has no id"),
    ('item {\n  name: "a"\n  id: one\n}\n', "line 3: id 'one' is not an integer"),
    ('item {\n  name: "a"\n  id: 1\n}\nitem {\n  name: "b"\n  id: 1\n}\n', "line 7: id 1 is given twice (its first name is 'a')"),
    ('item {\n  name: a\n  id: 1\n}\n', "line 2: name a is not a quoted string"),
    ('item {\n  name: "a"\n  id: 1\n', "line 1: the item is not closed"),
    ('  name: "a"\n', "line 1: 'name: \"a\"' is outside"),
    ('\n\n', "has no items"),
])
def test_label_map_errors_name_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "bad.pbtxt", text)
    with pytest.raises(DataError, match="bad.pbtxt") as error:
        read_label_map(path)
    assert message in str(error.value)


# -- annotations ------------------------------------------------------------------------------------

def test_annotations_merge_rows_of_one_box(tmp_path):
    path = write(tmp_path, "train.csv",
                 "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,80,1\n"
                 "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,9,1\n"
                 "-5KQ66BBWC4,0902,0.332,0.194,0.481,0.891,12,0\n"
                 "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,9,1\n"
                 "-5KQ66BBWC4,0903,0.077,0.151,0.283,0.811,80,1\n")
    annotations = read_annotations(path)
    assert list(annotations) == [("-5KQ66BBWC4", 902), ("-5KQ66BBWC4", 903)]
    assert annotations["-5KQ66BBWC4", 902] == [
        ActorBox(box=(0.077, 0.151, 0.283, 0.811), actions=(9, 80), person_id=1),
        ActorBox(box=(0.332, 0.194, 0.481, 0.891), actions=(12,), person_id=0)]
    assert annotations["-5KQ66BBWC4", 903] == [ActorBox(box=(0.077, 0.151, 0.283, 0.811), actions=(80,), person_id=1)]


def test_annotations_without_person_id_or_action(tmp_path):
    path = write(tmp_path, "old.csv", "vid,0902,0.1,0.2,0.3,0.4,5\nvid,0903,0.1,0.2,0.3,0.4,\nvid,0904\n")
    assert read_annotations(path) == {
        ("vid", 902): [ActorBox(box=(0.1, 0.2, 0.3, 0.4), actions=(5,), person_id=None)],
        ("vid", 903): [ActorBox(box=(0.1, 0.2, 0.3, 0.4), actions=(), person_id=None)],
        ("vid", 904): []}  # a keyframe without boxes, as the ActivityNet evaluator writes it


@pytest.mark.parametrize("row, message", [
    ("vid,0902,0.1,0.2,0.3", "line 3: 5 columns"),
    ("vid,09x2,0.1,0.2,0.3,0.4,1,0", "line 3: second '09x2' is not an integer"),
    ("vid,0902,0.1,abc,0.3,0.4,1,0", "line 3: y1 'abc' is not a number"),
    ("vid,0902,0.1,0.2,1.3,0.4,1,0", "line 3: x2 1.3 is outside [0, 1]"),
    ("vid,0902,-0.1,0.2,0.3,0.4,1,0", "line 3: x1 -0.1 is outside [0, 1]"),
    ("vid,0902,0.5,0.2,0.3,0.4,1,0", "line 3: box (0.5, 0.2, 0.3, 0.4) has x2 < x1"),
    ("vid,0902,0.1,0.2,0.3,0.4,walk,0", "line 3: action_id 'walk' is not an integer"),
    ("vid,0902,0.1,0.2,0.3,0.4,1,p0", "line 3: person_id 'p0' is not an integer"),
    (",0902,0.1,0.2,0.3,0.4,1,0", "line 3: the video_id is empty"),
])
def test_annotation_errors_name_file_and_line(tmp_path, row, message):
    path = write(tmp_path, "val.csv", f"vid,0902,0.1,0.2,0.3,0.4,1,0\n\n{row}\n")
    with pytest.raises(DataError, match="val.csv") as error:
        read_annotations(path)
    assert message in str(error.value)


def test_annotation_action_not_in_label_map(tmp_path):
    label_map = read_label_map(write(tmp_path, "actions.pbtxt", LABEL_MAP))
    path = write(tmp_path, "val.csv", "vid,0902,0.1,0.2,0.3,0.4,1,0\nvid,0902,0.1,0.2,0.3,0.4,7,0\n")
    with pytest.raises(DataError, match=r"val.csv line 2: action id 7 is not in the label map .*actions.pbtxt "
                                        r"\(3 ids: 1, 2, 11\)"):
        read_annotations(path, label_map=label_map)
    assert read_annotations(path)["vid", 902][0].actions == (1, 7)  # without a label map any id is kept


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="annotation file .*absent.csv does not exist"):
        read_annotations(tmp_path / "absent.csv")


# -- exclusions and proposals -------------------------------------------------------------------------

def test_exclusions(tmp_path):
    assert read_exclusions(write(tmp_path, "ex.csv", "vid,0902\nvid,1798\n")) == {("vid", 902), ("vid", 1798)}
    with pytest.raises(DataError, match="ex.csv line 2: 3 columns"):
        read_exclusions(write(tmp_path, "ex.csv", "vid,0902\nvid,0903,1\n"))


def test_proposals_threshold_and_merge(tmp_path):
    path = write(tmp_path, "predicted.csv",
                 "vid,0902,0.1,0.2,0.3,0.4,,0.95\n"
                 "vid,0902,0.1,0.2,0.3,0.4,12,0.95\n"
                 "vid,0902,0.5,0.2,0.7,0.4,,0.5\n"
                 "vid,0903,0.5,0.2,0.7,0.4,,0.6\n")
    assert read_proposals(path) == {("vid", 902): [ScoredBox(box=(0.1, 0.2, 0.3, 0.4), score=0.95),
                                                   ScoredBox(box=(0.5, 0.2, 0.7, 0.4), score=0.5)],
                                    ("vid", 903): [ScoredBox(box=(0.5, 0.2, 0.7, 0.4), score=0.6)]}
    assert read_proposals(path, score_threshold=0.8) == {("vid", 902): [ScoredBox(box=(0.1, 0.2, 0.3, 0.4),
                                                                                  score=0.95)]}


@pytest.mark.parametrize("row, message", [
    ("vid,0902,0.1,0.2,0.3,0.4,0.9", "line 2: 7 columns"),
    ("vid,0902,0.1,0.2,0.3,0.4,,nan", "line 2: score 'nan' is not finite"),
    ("vid,0902,0.1,0.2,0.3,0.4,,high", "line 2: score 'high' is not a number"),
    ("vid,0902,0.1,0.5,0.3,0.4,,0.9", "line 2: box (0.1, 0.5, 0.3, 0.4) has x2 < x1 or y2 < y1"),
])
def test_proposal_errors(tmp_path, row, message):
    with pytest.raises(DataError, match="predicted.csv") as error:
        read_proposals(write(tmp_path, "predicted.csv", f"vid,0902,0.1,0.2,0.3,0.4,,0.9\n{row}\n"))
    assert message in str(error.value)


# -- detections -------------------------------------------------------------------------------------

def test_detections_round_trip(tmp_path):
    detections = [Detection(keyframe=("vid", 902), box=(0.1, 0.2, 0.3, 0.4), action=11, score=0.123456),
                  Detection(keyframe=("vid", 1798), box=(0.0, 0.0, 1.0, 1.0), action=1, score=1.0)]
    path = tmp_path / "out" / "detections.csv"
    write_detections(path, detections)
    assert path.read_text().splitlines() == ["vid,0902,0.100,0.200,0.300,0.400,11,0.123456",
                                             "vid,1798,0.000,0.000,1.000,1.000,1,1.000000"]
    label_map = read_label_map(write(tmp_path, "actions.pbtxt", LABEL_MAP))
    assert read_detections(path, label_map=label_map) == detections


def test_detection_errors(tmp_path):
    label_map = read_label_map(write(tmp_path, "actions.pbtxt", LABEL_MAP))
    path = write(tmp_path, "det.csv", "vid,0902,0.1,0.2,0.3,0.4,1,0.5\nvid,0902,0.1,0.2,0.3,0.4,3,0.5\n")
    with pytest.raises(DataError, match=r"det.csv line 2: action id 3 is not in the label map"):
        read_detections(path, label_map=label_map)
    with pytest.raises(DataError, match=r"det.csv line 1: action_id '' is not an integer"):
        read_detections(write(tmp_path, "det.csv", "vid,0902,0.1,0.2,0.3,0.4,,0.5\n"))
    with pytest.raises(DataError, match=r"det.csv line 1: 7 columns"):
        read_detections(write(tmp_path, "det.csv", "vid,0902,0.1,0.2,0.3,0.4,1\n"))


# -- frame lists ------------------------------------------------------------------------------------

HEADER = "original_vido_id video_id frame_id path labels\n"


def test_frame_list_orders_frames_by_id(tmp_path):
    path = write(tmp_path, "val.csv", HEADER +
                 '-5KQ66BBWC4 0 1 -5KQ66BBWC4/-5KQ66BBWC4_000002.jpg ""\n'
                 '-5KQ66BBWC4 0 0 -5KQ66BBWC4/-5KQ66BBWC4_000001.jpg ""\n'
                 '053oq2xB3oU 1 0 053oq2xB3oU/053oq2xB3oU_000001.jpg ""\n')
    frames = read_frame_list(path, root=tmp_path / "frames")
    assert frames == {"-5KQ66BBWC4": [tmp_path / "frames/-5KQ66BBWC4/-5KQ66BBWC4_000001.jpg",
                                      tmp_path / "frames/-5KQ66BBWC4/-5KQ66BBWC4_000002.jpg"],
                      "053oq2xB3oU": [tmp_path / "frames/053oq2xB3oU/053oq2xB3oU_000001.jpg"]}


@pytest.mark.parametrize("text, message", [
    ("", "line 1: expected the header 'original_vido_id video_id frame_id path labels', found nothing"),
    ('v 0 0 v/v_000001.jpg ""\n', "line 1: expected the header"),
    ("original_video_id video_id frame_id path labels\n", "line 1: expected the header"),
    (HEADER + 'v 0 0 v/v_000001.jpg ""\nv 0 1 v/v_000002.jpg\n', "line 3: 4 columns; expected 5"),
    (HEADER + 'v 0 0 v/v_000001.jpg ""\nv 0 x v/v_000002.jpg ""\n', "line 3: frame_id 'x' is not an integer"),
    (HEADER + 'v 0 0 v/v_000001.jpg ""\nv 0 0 v/v_000002.jpg ""\n', "line 3: frame_id 0 of video v is listed twice"),
    (HEADER + 'w 0 0 w/w_000001.jpg ""\nv 1 0 v/v_000001.jpg ""\nv 1 2 v/v_000003.jpg ""\n',
     "line 3: the frame ids of video v are not 0..1 without gaps (frame_id 1 is missing)"),
])
def test_frame_list_errors(tmp_path, text, message):
    with pytest.raises(DataError, match="frames.csv") as error:
        read_frame_list(write(tmp_path, "frames.csv", text), root=tmp_path)
    assert message in str(error.value)


def test_timestamp_to_frame_as_pyslowfast():
    assert timestamp_to_frame(900, fps=30, first_second=900) == 0
    assert timestamp_to_frame(902, fps=30, first_second=900) == 60
