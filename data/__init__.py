"""Training data: ``build_train_dataset(args)`` and ``build_train_sampler(dataset, args, rank, world_size)``.

See ``data.video_dataset`` (branches, decoding, frame-level transform), ``data.scan`` (metadata cache) and
``data.sampler`` (epoch order, per-sample seeds, resume, sharding). The names are imported lazily, so that
``import data.synthetic`` (or ``data.vos``) does not load the video stack.
"""
import importlib

_EXPORTS = {
    'build_train_dataset': 'video_dataset', 'detect_layout': 'video_dataset', 'DatasetError': 'video_dataset',
    'VideoClipDataset': 'video_dataset', 'FrameFolderDataset': 'video_dataset',
    'build_train_sampler': 'sampler', 'ClipSampler': 'sampler', 'mix_seed': 'sampler',
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'.{_EXPORTS[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(list(globals()) + __all__)
