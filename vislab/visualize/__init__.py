"""Drawing and exporting model outputs."""
