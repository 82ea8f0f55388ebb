"""The embedded default: scikit-learn's 1,797 handwritten digits (8x8, 16 grey levels).

The split is fixed (stratified, 20% validation, seed 0), so every run and every test sees the
same 1,437 training and 360 validation images. Images are upsampled to 32x32 RGB so that they
go through the same transforms and models as any photograph.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

SIDE = 32
VAL_FRACTION = 0.2


class DigitsDataset(Dataset):
    def __init__(self, split: str):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "val"):
            raise ValueError(f"digits has splits 'train' and 'val', not {split!r}")
        digits = load_digits()
        indices = np.arange(len(digits.target))
        train_idx, val_idx = train_test_split(indices, test_size=VAL_FRACTION, stratify=digits.target,
                                              random_state=0)
        chosen = np.sort(train_idx if split == "train" else val_idx)
        self.images = (digits.images[chosen] * (255.0 / 16.0)).round().astype(np.uint8)
        self.labels = digits.target[chosen].astype(np.int64).tolist()
        self.classes = [str(d) for d in range(10)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        image = Image.fromarray(self.images[index], mode="L").resize((SIDE, SIDE), Image.BILINEAR)
        return image.convert("RGB"), self.labels[index]
