"""Data: training clips (video_io, scan, video_dataset, sampler, transforms, gpu_augment), test-time videos
(vos, jhmdb), frames and label images on disk (images) and synthetic videos with exact masks (synthetic)."""
