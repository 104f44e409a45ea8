"""Regenerate the bundled demo sample (assets/sample/): a synthetic DAVIS-layout sequence of three textured
objects moving over a textured background, with exact masks for every frame.

    python scripts/make_sample.py            # writes assets/sample/ (what the repository ships)
"""
import argparse
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: scripts/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)

from crw.data.synthetic import make_sequence, write_davis_layout  # noqa: E402
from crw.utils.arguments import OneLineParser  # noqa: E402


def main(argv=None):
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=os.path.join(ROOT, 'assets', 'sample'))
    p.add_argument('--frames', type=int, default=30)
    p.add_argument('--seed', type=int, default=7)
    a = p.parse_args(argv)
    seq = make_sequence(num_frames=a.frames, height=240, width=320, num_objects=3, seed=a.seed, max_speed=3,
                        object_size=(56, 88), cell=12)
    # Easier on the eye than raw colour noise: a muted grey background and a tint per object. Applied through
    # the exact masks, so it is the same as tinting each object's texture.
    frames = seq['frames'].astype(np.float32)
    grey = frames.mean(-1, keepdims=True)
    out = 0.35 * frames + 0.45 * grey + 30
    tints = np.array([[255, 60, 40], [40, 200, 70], [60, 110, 255]], np.float32)
    for k, tint in enumerate(tints, 1):
        sel = seq['masks'] == k
        out[sel] = 0.55 * frames[sel] + 0.45 * tint
    seq['frames'] = np.clip(out, 0, 255).astype(np.uint8)
    shutil.rmtree(a.out, ignore_errors=True)
    filelist = write_davis_layout(a.out, {'shapes': seq})
    # the shipped list is relative to the sample root (test.py --data-root assets/sample)
    with open(filelist, 'w') as f:
        f.write('JPEGImages/480p/shapes Annotations/480p/shapes\n')
    print(f'wrote {a.out} ({a.frames} frames, 3 objects)')


if __name__ == '__main__':
    main()
