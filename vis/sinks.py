"""Where the pictures of ``vis/draw.py`` go.

``Visualizer`` (train.py --visualize) always writes PNGs under <output-dir>/vis/ (the last ``VIS_KEEP``
drawings), sends them to visdom when a server answers and to wandb when it is installed (offline unless
configured), and logs the scalars to wandb; drawing and sending run on a background thread.
``PropagationViewer`` (test.py --visdom / --pca-vis) shows each propagated frame's blend and its features' PCA
in visdom. visdom and wandb are optional: missing, or no server, is one warning.
"""
import logging
import os
import re
import socket
import warnings
from urllib.parse import urlparse

import cv2
import numpy as np
from PIL import Image

from crw.utils.background import AsyncWriter
from crw.utils.misc import atomic_write
from crw.vis.draw import PCAColours, batch_inputs, training_views

VIS_KEEP = 20        # drawings (steps) whose PNGs stay in <output-dir>/vis/
# Training views -> visdom windows: the release's names where it had one ('nn_patches' is new: the release
# spread the neighbours over one window per query and neighbour).
WINDOWS = {'pca': 'pcafeats', 'flow': 'flow_quiver', 'matches': 'kpcorr', 'neighbours': 'nn_patches',
           'loss': 'lossvis'}
TEST_ENVS = {'blend': 'main_davis_viz1', 'pca': 'main_pca'}  # test.py's visdom environments (release names)


def connect_visdom(server, port, env, flag):
    """A visdom client for ``server:port`` (environment ``env``), or None after one warning naming ``flag``
    (visdom not installed, or no server answering within 2 s)."""
    url = server if '://' in server else f'http://{server}'
    try:
        import visdom
    except ImportError:
        warnings.warn(f'{flag}: visdom is not installed, so nothing is sent there; install it with '
                      '`bash scripts/setup.sh` (it builds visdom 0.2.4, which needs setuptools<81 to build)',
                      stacklevel=3)
        return None
    try:
        logging.getLogger('visdom').setLevel(logging.ERROR)  # its per-session chatter
        with socket.create_connection((urlparse(url).hostname, port), timeout=2):
            pass
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DeprecationWarning)  # visdom 0.2.4 calls logger.warn
            return visdom.Visdom(server=url, port=port, env=env, raise_exceptions=True, use_incoming_socket=False)
    except Exception as e:  # noqa: BLE001 - no visdom is a warning, never a crash
        warnings.warn(f'{flag}: visdom unavailable ({type(e).__name__}: {e}); nothing is sent there. Start a '
                      f'server with: python -m visdom.server -port {port}', stacklevel=3)
        return None


class Visualizer:
    """train.py --visualize: scalars to wandb; pictures to PNG files, visdom and wandb.

    ``pictures`` copies what it needs from the step's tensors (tens of milliseconds) and leaves the drawing,
    PNG encoding and sending to a background thread; one drawing is in flight at most, and scalars wait for
    it so that wandb's steps never go back.
    """

    def __init__(self, args):
        self.wandb = self._wandb_module = self.vis = None
        self.png_dir = os.path.join(args.output_dir, 'vis')
        self.env = args.name or os.path.basename(os.path.normpath(args.output_dir)) or 'main'
        try:
            import wandb
            os.environ.setdefault('WANDB_MODE', 'offline')
            self.wandb = wandb.init(project='crw', name=os.path.basename(os.path.normpath(args.output_dir)),
                                    dir=args.output_dir, config=vars(args), resume='allow')
            self._wandb_module = wandb
        except Exception as e:  # noqa: BLE001 - any wandb failure must not stop training
            warnings.warn(f'--visualize: wandb unavailable ({type(e).__name__}: {e}); nothing is logged there')
        self.vis = connect_visdom(args.server, args.port, self.env, '--visualize')
        self.background = AsyncWriter(threads=1, max_pending=1)
        print(f"| --visualize: pictures every {args.vis_every} iterations to {self.png_dir}"
              + (f', visdom {args.server}:{args.port} env {self.env!r}' if self.vis else '')
              + (', wandb' if self.wandb else ''))

    def log(self, scalars, step):
        if self.wandb is not None:
            self.background.wait()
            self.wandb.log(scalars, step=step)

    def pictures(self, model, clips, video, q, step):
        """Draw the views of the batch's first clip and send them (see ``batch_inputs`` for the arguments); a
        failure is a warning, never the end of the run."""
        try:
            inputs = batch_inputs(model, clips, video, q)
        except Exception as e:  # noqa: BLE001 - a picture must not end a training run
            warnings.warn(f'--visualize: drawing failed at step {step} ({type(e).__name__}: {e})')
            return
        self.background.submit(self._draw_and_show, inputs, step)

    def _draw_and_show(self, inputs, step):
        try:
            self.show(training_views(**inputs, seed=step), step)
        except Exception as e:  # noqa: BLE001
            warnings.warn(f'--visualize: drawing failed at step {step} ({type(e).__name__}: {e})')

    def show(self, views, step):
        """views {name: RGB uint8 image} -> PNGs (always), visdom windows and wandb images (when on)."""
        os.makedirs(self.png_dir, exist_ok=True)
        for name, img in views.items():
            with atomic_write(os.path.join(self.png_dir, f'{step:08d}_{name}.png')) as f:
                Image.fromarray(img).save(f, format='PNG', compress_level=1)  # 4x faster than the default 6
        prune_pngs(self.png_dir, VIS_KEEP)
        if self.vis is not None:
            try:
                for name, img in views.items():
                    self.vis.image(img.transpose(2, 0, 1), win=WINDOWS.get(name, name), env=self.env,
                                   opts={'title': f'{name} (step {step})'})
            except Exception as e:  # noqa: BLE001 - the server went away: keep training, stop sending
                warnings.warn(f'--visualize: visdom stopped answering ({type(e).__name__}: {e}); '
                              'pictures go to the PNG files only from now on')
                self.vis = None
        if self.wandb is not None:
            self.wandb.log({f'vis/{name}': self._wandb_module.Image(img) for name, img in views.items()}, step=step)

    def close(self):
        self.background.close()
        if self.wandb is not None:
            self.wandb.finish()


_PNG = re.compile(r'^(\d+)_\w+\.png$')


def prune_pngs(folder, keep):
    """Delete the PNGs of all but the ``keep`` latest steps (files named <step>_<view>.png)."""
    steps = {}
    for name in os.listdir(folder):
        m = _PNG.match(name)
        if m:
            steps.setdefault(int(m.group(1)), []).append(name)
    for s in sorted(steps)[:-keep] if keep > 0 else sorted(steps):
        for name in steps[s]:
            try:
                os.remove(os.path.join(folder, name))
            except FileNotFoundError:
                pass


class PropagationViewer:
    """test.py --visdom / --pca-vis: every propagated frame's blend (window ``blend_<video>``, environment
    main_davis_viz1) and the PCA of its features (window ``pca_<video>``, environment main_pca; the colours are
    fitted on the video's first frame, so they are comparable across frames). Sends happen in order on a
    background thread; ``close()`` waits for them."""

    def __init__(self, server, port, blend=True, pca=False):
        self.vis = connect_visdom(server, port, TEST_ENVS['blend'], '--visdom' if blend else '--pca-vis')
        self.show_blend, self.show_pca = blend, pca
        self._pca = None
        self.background = AsyncWriter(threads=1, max_pending=8)

    def __bool__(self):
        return self.vis is not None

    def _send(self, img, win, env, title):
        if self.vis is None:
            return
        try:
            self.vis.image(img.transpose(2, 0, 1), win=win, env=env, opts={'title': title})
        except Exception as e:  # noqa: BLE001 - the server went away: results are still written
            warnings.warn(f'--visdom: visdom stopped answering ({type(e).__name__}: {e}); nothing more is sent')
            self.vis = None

    def blend(self, video, name, t, img):
        """img [H, W, 3] uint8: frame t of video number ``video`` with its propagated labels."""
        if self.vis is not None and self.show_blend:
            self.background.submit(self._send, img, f'blend_{video}', TEST_ENVS['blend'], f'{video} {name}: frame {t}')

    def features(self, video, name, t, feat, size):
        """feat [C, h, w] (tensor) of frame t; the PCA picture is shown at ``size`` (H, W)."""
        if self.vis is None or not self.show_pca:
            return
        C, h, w = feat.shape
        x = feat.detach().float().reshape(C, h * w).t().cpu().numpy()
        if t == 0 or self._pca is None:
            self._pca = PCAColours(x)
        rgb = (self._pca(x).reshape(h, w, 3) * 255).round().astype(np.uint8)
        img = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        self.background.submit(self._send, img, f'pca_{video}', TEST_ENVS['pca'],
                               f'{video} {name}: PCA of frame {t} features')

    def close(self):
        self.background.close()
