"""Action detection on a video file from person boxes: every keyframe the boxes file lists for the
video is scored as in evaluation (the clip centred on it, the full frame at the test size), and
the boxes with their likely actions are drawn on the video's frames."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.utils import draw_bounding_boxes

from vislab.data.datasets.ava_files import ScoredBox, read_proposals
from vislab.data.datasets.image_folder import DataError
from vislab.data.video.decode import VideoReader
from vislab.data.video.encode import write_mp4
from vislab.data.video.sampling import keyframe_clip_indices
from vislab.utils.finite import check_finite
from vislab.visualize.detection import class_colour


@dataclass
class KeyframeActions:
    second: int
    frame: int  # index of the keyframe in the video
    boxes: torch.Tensor  # [N, 4] normalised x1, y1, x2, y2
    probabilities: torch.Tensor  # [N, classes]


def boxes_for_video(path: str | Path, *, video: str, score_threshold: float) -> dict[int, list[ScoredBox]]:
    """second -> the boxes a proposals-format CSV gives for ``video`` (the video file's stem), or
    for its only video when it names just one."""
    proposals = read_proposals(path, score_threshold=score_threshold)
    videos = sorted({name for name, _ in proposals})
    if video not in videos and len(videos) == 1:
        video = videos[0]
    boxes = {second: found for (name, second), found in proposals.items() if name == video}
    if not boxes:
        raise DataError(f"{path} has no boxes scoring at least {score_threshold} for video {video!r} "
                        f"(it lists {', '.join(videos[:5]) or 'none'})")
    return boxes


@dataclass
class ActionPredictor:
    model: nn.Module
    transform: object  # actor_test_transform
    classes: list[str]
    num_frames: int
    stride: int
    first_second: int

    @torch.no_grad()
    def predict(self, path: str | Path, *, boxes: dict[int, list[ScoredBox]]) -> list[KeyframeActions]:
        """Each keyframe's boxes and their action probabilities; keyframe ``second`` is frame
        ``round((second - first_second) * fps)`` of the video at its own frame rate."""
        results = []
        with VideoReader(path) as video:
            for second, scored in sorted(boxes.items()):
                frame = round((second - self.first_second) * video.fps)
                if not 0 <= frame < video.num_frames:
                    raise DataError(f"keyframe {second} s is frame {frame} of {path}, which has {video.num_frames} "
                                    f"frames from {self.first_second} s on at {float(video.fps):g} fps")
                indices = keyframe_clip_indices(keyframe=frame, num_frames_video=video.num_frames,
                                                num_frames=self.num_frames, stride=self.stride)
                normalised = torch.tensor([b.box for b in scored], dtype=torch.float32)
                clip, pixels = self.transform(video.frames(indices), normalised)
                rois = torch.cat([torch.zeros(len(pixels), 1), pixels], dim=1)
                probabilities = self.model(clip[None], rois).float()
                check_finite(probabilities, what=f"the model's output for {path} at {second} s",
                             consequence="these weights are broken (saved from a run that diverged?)")
                results.append(KeyframeActions(second=second, frame=frame, boxes=normalised,
                                               probabilities=probabilities))
        return results


def _captions(probabilities: torch.Tensor, classes: list[str], *, threshold: float) -> list[str]:
    """Per box, its actions at or above ``threshold`` ("name 0.93"), most likely first; the most
    likely one when none reaches it."""
    captions = []
    for row in probabilities.tolist():
        order = sorted(range(len(row)), key=lambda c: -row[c])
        chosen = [c for c in order if row[c] >= threshold] or order[:1]
        captions.append(", ".join(f"{classes[c]} {row[c]:.2f}" for c in chosen))
    return captions


def draw_actions(path: str | Path, out: str | Path, results: list[KeyframeActions], *, classes: list[str],
                 threshold: float) -> None:
    """Write ``out`` (mp4): the video's frames, each with the boxes and actions of the keyframe
    nearest to it."""
    if not results:
        raise ValueError("no keyframes to draw")
    with VideoReader(path) as video:
        frames = video.frames(range(video.num_frames))
        fps = video.fps
    keyframes = np.array([r.frame for r in results])
    height, width = frames.shape[1:3]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    drawn = []
    for index, frame in enumerate(frames):
        result = results[int(np.abs(keyframes - index).argmin())]
        captions = _captions(result.probabilities, classes, threshold=threshold)
        colours = [class_colour(int(p.argmax())) for p in result.probabilities]
        canvas = draw_bounding_boxes(frame.permute(2, 0, 1), result.boxes * scale, labels=captions, colors=colours,
                                     width=1, fill_labels=True, label_colors="white")
        drawn.append(canvas.permute(1, 2, 0).numpy())
    even = np.stack(drawn)[:, :height - height % 2, :width - width % 2]  # yuv420p needs even sides
    write_mp4(out, even, fps=round(float(fps)))


def actions_to_json(results: list[KeyframeActions], *, classes: list[str]) -> list[dict]:
    """One JSON-ready record per keyframe box: second, normalised box and every action's probability."""
    return [{"second": r.second, "box": box, "actions": dict(zip(classes, probs))}
            for r in results for box, probs in zip(r.boxes.tolist(), r.probabilities.tolist())]
