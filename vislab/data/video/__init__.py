"""Video data: list files, PyAV decoding with seeking, and clip index sampling."""
