"""R-CNN detection parts: anchors, box coding, matching, sampling, RPN, ROI heads."""
