"""Label propagation by k-nearest-neighbour voting in feature space.

protocol   the settings (Protocol: context length, radius, k, temperature, long-term memory) and the rules
           both implementations share (context frames, radius offsets)
reference  the release's algorithm, all affinities (``test.py --dense``)
windowed   the default: the same results from the scores inside the radius only, bounded memory
encoder    load_encoder, encode_frames: the encoder for propagation and its features
video      the one loop: VideoPropagator (frames and masks in, PropagatedFrame out to sinks), propagate (a
           generator for your own code), PropagationOptions (test.py's flags), make_propagator
finetune   test-time adaptation (``test.py --finetune``)
"""
from crw.propagation.encoder import STRIDE, encode_frames, load_encoder
from crw.propagation.protocol import Protocol
from crw.propagation.reference import ReferencePropagator
from crw.propagation.video import (PropagatedFrame, PropagationOptions, VideoPropagator, make_propagator, propagate,
                               soft_to_index)
from crw.propagation.windowed import WindowedPropagator

__all__ = ['STRIDE', 'PropagatedFrame', 'PropagationOptions', 'Protocol', 'ReferencePropagator', 'VideoPropagator',
           'WindowedPropagator', 'encode_frames', 'load_encoder', 'make_propagator', 'propagate', 'soft_to_index']
