"""Label propagation by k-nearest-neighbour voting in feature space.

protocol   the settings (Protocol: context length, radius, k, temperature, long-term memory) and the rules
           both implementations share (context frames, radius offsets)
reference  the release's algorithm, all affinities (``test.py --dense``)
windowed   the default: the same results from the scores inside the radius only, bounded memory
api        load_encoder, encode_frames, propagate_video: encoder, features, soft-map propagation
video      VideoPropagator, propagate: frames and masks in, label ids out, annotations on any frames; what
           test.py uses for --filelist and --video
"""
from propagation.api import (STRIDE, encode_frames, load_encoder, make_propagator, propagate_video,
                             soft_to_index)
from propagation.protocol import Protocol
from propagation.reference import ReferencePropagator
from propagation.video import VideoPropagator, propagate
from propagation.windowed import WindowedPropagator

__all__ = ['STRIDE', 'Protocol', 'ReferencePropagator', 'VideoPropagator', 'WindowedPropagator', 'encode_frames',
           'load_encoder', 'make_propagator', 'propagate', 'propagate_video', 'soft_to_index']
