"""Image transforms per task."""
