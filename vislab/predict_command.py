"""The body of ``vislab predict``."""
from __future__ import annotations

import json
from pathlib import Path


def predict_command(args) -> int:
    """``vislab predict``: top-k classes of images or videos, a detector's boxes drawn on images,
    or an action detector's boxes and actions drawn on a video."""
    from vislab.predict import DetectionPredictor, VideoPredictor, load_predictor
    from vislab.predict_actions import ActionPredictor

    predictor = load_predictor(args.weights, model_name=args.model)
    if isinstance(predictor, DetectionPredictor):
        return _predict_detections(predictor, args)
    if isinstance(predictor, ActionPredictor):
        return _predict_actions(predictor, args)
    if isinstance(predictor, VideoPredictor):
        for path in args.images:
            top, num_views = predictor.predict(path, topk=args.topk)
            print(f"{path} ({num_views} views: {predictor.num_clips} clips x {num_views // predictor.num_clips} crops)")
            for label, prob in top:
                print(f"  {prob:7.2%}  {label}")
        return 0
    for path, top in zip(args.images, predictor.predict(args.images, topk=args.topk)):
        print(path)
        for label, prob in top:
            print(f"  {prob:7.2%}  {label}")
    return 0


def _predict_detections(predictor, args) -> int:
    """Draw each image's detections into a PNG and write them as JSON beside it: ``--out`` is the
    PNG for one image, a folder for several (default: IMAGE.pred.png beside each image)."""
    from vislab.data.datasets.image_folder import read_rgb
    from vislab.utils.files import atomic_write_text
    from vislab.visualize.detection import detections_to_json, draw_detections

    for path in map(Path, args.images):
        out = _output_path(path, args, suffix=".pred.png")
        result = predictor.predict(path)
        drawn = draw_detections(read_rgb(path), boxes=result["boxes"], labels=result["labels"],
                                scores=result["scores"], masks=result.get("masks"),
                                class_names=predictor.classes, score_threshold=args.score_threshold)
        drawn.save(out)
        keep = result["scores"] >= args.score_threshold
        records = detections_to_json(boxes=result["boxes"][keep], labels=result["labels"][keep],
                                     scores=result["scores"][keep], class_names=predictor.classes,
                                     masks=result["masks"][keep] if "masks" in result else None)
        atomic_write_text(out.with_suffix(".json"), json.dumps({"image": str(path), "detections": records}))
        print(f"{path}: {len(records)} detections above {args.score_threshold} -> {out}, {out.with_suffix('.json')}")
    return 0


def _predict_actions(predictor, args) -> int:
    """Score the boxes ``--boxes`` lists for each video's keyframes, draw them with their
    actions into an mp4 (``--out`` for one video, a folder for several; default VIDEO.pred.mp4)
    and write the probabilities as JSON beside it."""
    from vislab.predict_actions import actions_to_json, boxes_for_video, draw_actions
    from vislab.utils.files import atomic_write_text

    if not args.boxes:
        raise ValueError("an action detector scores given person boxes: pass --boxes BOXES.csv "
                         "(video_id,second,x1,y1,x2,y2,,score rows, boxes normalised to [0, 1])")
    for path in map(Path, args.images):
        out = _output_path(path, args, suffix=".pred.mp4")
        boxes = boxes_for_video(args.boxes, video=path.stem, score_threshold=args.box_threshold)
        results = predictor.predict(path, boxes=boxes)
        draw_actions(path, out, results, classes=predictor.classes, threshold=args.score_threshold)
        atomic_write_text(out.with_suffix(".json"), json.dumps(
            {"video": str(path), "actions": actions_to_json(results, classes=predictor.classes)}))
        print(f"{path}: {sum(len(r.boxes) for r in results)} boxes on {len(results)} keyframes -> {out}, "
              f"{out.with_suffix('.json')}")
    return 0


def _output_path(path: Path, args, *, suffix: str) -> Path:
    """``--out`` for one input, ``--out/<stem><suffix>`` for several, else beside the input."""
    if args.out and len(args.images) == 1:
        out = Path(args.out)
    elif args.out:
        out = Path(args.out) / f"{path.stem}{suffix}"
    else:
        out = path.with_name(f"{path.stem}{suffix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out
