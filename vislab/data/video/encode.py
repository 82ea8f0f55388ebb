"""Writing frames as an mp4 file with PyAV, byte-identical across machines for the same frames."""
from __future__ import annotations

import os

import av
import numpy as np

KEYFRAME_INTERVAL = 8  # several key frames a clip, so that decoding a clip exercises seeking


def _encoder() -> str:
    """H.264 when this FFmpeg build has libx264, else MPEG-4 part 2, which every build has."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except av.FFmpegError:
        return "mpeg4"


def write_mp4(path: str | os.PathLike, frames: np.ndarray, *, fps: int) -> None:
    """Encode uint8 [T, H, W, 3] (H and W even, as yuv420p needs) single-threaded, so that the
    same frames give the same file on any machine."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(_encoder(), rate=fps, options={"threads": "1"})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = KEYFRAME_INTERVAL
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
