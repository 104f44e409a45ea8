"""Training data, in the order a step uses it.

``scan`` lists and probes the videos of ``--data-path`` (cached with ``--cache-dataset``); ``video_dataset``
turns an index into a uint8 clip [T, 3, S, S] (decoded, resampled, cropped per frame by ``transforms``);
``sampler`` orders an epoch's clips and seeds each. On the device, ``gpu_augment.BatchAugment`` jitters and
normalises the batch, and with ``--frame-aug grid`` cuts every frame into the patches that are the walk's
nodes (``nodes``); without the grid every feature-map cell of a whole frame is a node (``model.CRW.embed``).
"""
