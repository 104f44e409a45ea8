"""Data: label images (labels), frames on disk (images), video decoding (video_io), synthetic videos with exact
masks (synthetic), training clips (scan, video_dataset, sampler, transforms, gpu_augment) and test-time data
(inference/)."""
