"""Self-supervised pre-training: MAE and MoCo (v1, v2, v3)."""
