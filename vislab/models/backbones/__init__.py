"""Backbones: networks that map images (or clips) to named multi-scale feature maps."""
