"""Actor-centric action detection data in AVA's formats: one sample per annotated keyframe, the
clip centred on it and the actor boxes at it.

Training samples carry the ground-truth boxes with their actions as multi-hot targets (and, with
``proposals_iou``, the person proposals that overlap a ground-truth box by more than that IoU,
labelled as it: PySlowFast's ``AVA.TRAIN_USE_PREDICTED_BOX`` rule, IoU > 0.9). Evaluation
samples carry the boxes the detector scores: the person proposals at or above the score
threshold (the keyframes they cover), or the ground-truth boxes; the evaluator reads the ground
truth from the annotation file itself.
"""
from __future__ import annotations

import os
from typing import Callable, Collection

import torch
from torch.utils.data import Dataset
from torchvision.ops import box_iou

from vislab.data.datasets.ava_files import ActorBox, Keyframe, LabelMap, ScoredBox, read_frame_list, timestamp_to_frame
from vislab.data.video.frame_sources import FrameFolders, FrameSource, VideoFiles, missing_videos
from vislab.data.video.sampling import keyframe_clip_indices

BoxesAndActions = list[tuple[tuple[float, float, float, float], tuple[int, ...]]]


def boxes_with_matching_proposals(actors: list[ActorBox], proposals: list[ScoredBox], *,
                                  min_iou: float) -> BoxesAndActions:
    """The ground-truth boxes and actions, then each proposal whose best ground-truth IoU exceeds
    ``min_iou``, with that box's actions."""
    boxes = [(actor.box, actor.actions) for actor in actors]
    if proposals and actors:
        iou = box_iou(torch.tensor([p.box for p in proposals]), torch.tensor([a.box for a in actors]))
        best_iou, best = iou.max(dim=1)
        boxes += [(proposal.box, actors[int(j)].actions)
                  for proposal, overlap, j in zip(proposals, best_iou, best) if overlap > min_iou]
    return boxes


class ActorClips(Dataset):
    """``(clip [3, T, h, w], target)`` per keyframe, where ``target`` holds ``boxes`` [N, 4] in the
    clip's pixels, ``labels`` [N, classes] multi-hot over ``label_map``'s ids, ``keyframe``
    (video id, second) and ``normalised_boxes`` [N, 4] (the boxes as the files give them).

    The clip is ``num_frames`` frames ``stride`` apart centred on the keyframe, frame
    ``(second - first_second) * fps`` of its video (AVA: 30 fps from second 900 on). The dataset
    samples and transforms clips itself with torch's default generator; wrap it in
    ``SeededSamples(dataset, None)``.
    """

    def __init__(self, *, source: FrameSource, boxes: dict[Keyframe, BoxesAndActions], label_map: LabelMap,
                 num_frames: int, stride: int, fps: int, first_second: int,
                 transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]):
        self.source = source
        self.keyframes = list(boxes)
        self.boxes = boxes
        self.label_map = label_map
        self.class_index = {action: i for i, action in enumerate(label_map.ids)}
        self.num_frames = num_frames
        self.stride = stride
        self.fps = fps
        self.first_second = first_second
        self.transform = transform

    @property
    def classes(self) -> list[str]:
        return list(self.label_map.names.values())

    def __len__(self) -> int:
        return len(self.keyframes)

    def frame_indices(self, keyframe: Keyframe) -> list[int]:
        video, second = keyframe
        centre = timestamp_to_frame(second, fps=self.fps, first_second=self.first_second)
        return keyframe_clip_indices(keyframe=centre, num_frames_video=self.source.num_frames(video),
                                     num_frames=self.num_frames, stride=self.stride)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        keyframe = self.keyframes[index]
        frames = self.source.read(keyframe[0], self.frame_indices(keyframe))
        normalised = torch.tensor([box for box, _ in self.boxes[keyframe]], dtype=torch.float32).view(-1, 4)
        labels = torch.zeros(len(normalised), len(self.class_index))
        for row, (_, actions) in enumerate(self.boxes[keyframe]):
            labels[row, [self.class_index[a] for a in actions if a in self.class_index]] = 1.0
        clip, boxes = self.transform(frames, normalised)
        return clip, {"boxes": boxes, "labels": labels, "keyframe": keyframe, "normalised_boxes": normalised}


def frame_source(*, frame_list: str | os.PathLike | None, frames_root: str | os.PathLike | None,
                 videos: str | os.PathLike | None) -> FrameSource:
    """Video files when ``videos`` names a folder, else the JPEG frames a frame list names."""
    if videos:
        return VideoFiles(videos)
    if frame_list is None or frames_root is None:
        raise ValueError("an action-detection set needs either a video folder or a frame list and its frame folder")
    return FrameFolders(read_frame_list(frame_list, root=frames_root), list_file=frame_list)


def actor_boxes(*, groundtruth: dict[Keyframe, list[ActorBox]], proposals: dict[Keyframe, list[ScoredBox]] | None,
                train: bool, proposals_iou: float | None = None,
                excluded: Collection[Keyframe] = ()) -> dict[Keyframe, BoxesAndActions]:
    """Each keyframe's input boxes: for training the ground truth (plus the ``proposals``
    overlapping it by more than ``proposals_iou``, when given); for evaluation the ``proposals``
    (when given) or the ground truth, ``excluded`` keyframes left out."""
    if train:  # keyframes annotated without boxes have nothing to train on
        if proposals_iou is None:
            return {key: [(a.box, a.actions) for a in actors] for key, actors in groundtruth.items() if actors}
        return {key: boxes_with_matching_proposals(actors, proposals.get(key, []), min_iou=proposals_iou)
                for key, actors in groundtruth.items() if actors}
    if proposals is not None:
        return {key: [(p.box, ()) for p in boxes] for key, boxes in proposals.items() if key not in excluded}
    return {key: [(a.box, ()) for a in actors] for key, actors in groundtruth.items()
            if actors and key not in excluded}


def actor_clips(*, source: FrameSource, boxes: dict[Keyframe, BoxesAndActions], label_map: LabelMap,
                named_in: str | os.PathLike, **clip_options) -> ActorClips:
    """``ActorClips`` after checking that ``source`` has every video ``boxes`` names."""
    missing_videos(source, [video for video, _ in boxes], named_in=named_in)
    return ActorClips(source=source, boxes=boxes, label_map=label_map, **clip_options)

