"""Data: ``training/`` (training clips, their order and augmentation, the walk's nodes), and what training and
test time share: frames and label images on disk (images), video decoding (video_io), synthetic videos with
exact masks (synthetic); test-time videos and outputs (vos, jhmdb, user_video, outputs)."""
