"""Necks: turn a backbone's multi-scale features into the maps detection heads read."""
