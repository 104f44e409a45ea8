"""Data: ``training/`` (training clips, their order and augmentation, the walk's nodes) and ``inference/``
(test-time videos, filelists and the outputs propagation writes), and what both phases share: label images
(labels), frames on disk (images), video decoding (video_io) and synthetic videos with exact masks (synthetic)."""
