"""Datasets: each returns ``(image, label)`` pairs with PIL images, or None for a skipped file."""
