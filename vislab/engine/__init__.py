"""The training engine: one loop for every task, with hooks for everything around it."""
