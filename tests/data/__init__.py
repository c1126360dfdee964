"""Tests of lightning_losses.data, and the COCO-format files they write."""
