"""The one-minute demo: propagate the first-frame mask of the bundled sample with pretrained.pth, score it
with the DAVIS J&F measure, and draw the result.

    python demo.py                       # writes demo_out/ and says where the pictures are

It runs exactly the project's evaluation chain (test.py -> eval/convert_davis.py -> eval/evaluate_davis.py)
on assets/sample/, a synthetic clip of three textured objects with exact masks (scripts/make_sample.py).
Point --sample at any folder in DAVIS layout with a one-sequence ImageSets/2017/val.txt to try your own.
"""
import argparse
import glob
import os
import subprocess
import sys
import time

from PIL import Image, ImageDraw

from eval import convert_davis, evaluate_davis
from utils.misc import atomic_write

ROOT = os.path.dirname(os.path.abspath(__file__))


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sample', default=os.path.join(ROOT, 'assets', 'sample'),
                   help='DAVIS-layout folder with vallist.txt (relative lines) and ImageSets/2017/val.txt')
    p.add_argument('--resume', default=os.path.join(ROOT, 'pretrained.pth'), help='checkpoint to propagate with')
    p.add_argument('--out', default=os.path.join(ROOT, 'demo_out'), help='where results and pictures go')
    p.add_argument('--device', default=None, help='cuda or cpu (default: cuda when available)')
    # README protocol settings
    p.add_argument('--topk', default=10, type=int)
    p.add_argument('--videoLen', default=20, type=int)
    p.add_argument('--radius', default=12, type=float)
    p.add_argument('--temperature', default=0.05, type=float)
    p.add_argument('--cropSize', default=-1, type=int)
    return p


def contact_sheet(frame_paths, out_path, columns=6, max_frames=18):
    """Tile up to ``max_frames`` evenly spaced blended frames into one PNG."""
    step = max(1, -(-len(frame_paths) // max_frames))
    chosen = frame_paths[::step][:max_frames]
    tiles = [Image.open(p).convert('RGB') for _, p in chosen]
    w, h = tiles[0].size
    rows = -(-len(tiles) // columns)
    sheet = Image.new('RGB', (columns * w, rows * h), 'white')
    for n, ((t, _), tile) in enumerate(zip(chosen, tiles)):
        x, y = (n % columns) * w, (n // columns) * h
        sheet.paste(tile, (x, y))
        ImageDraw.Draw(sheet).text((x + 4, y + 2), f'frame {t}', fill='white')
    with atomic_write(out_path) as f:
        sheet.save(f, format='PNG')


def animated_gif(frame_paths, out_path, fps=8):
    frames = [Image.open(p).convert('RGB').quantize(colors=255) for _, p in frame_paths]
    with atomic_write(out_path) as f:
        frames[0].save(f, format='GIF', save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)


def main(argv=None):
    a = get_args_parser().parse_args(argv)

    filelist = os.path.join(a.sample, 'vallist.txt')
    for path, what in ((filelist, 'sample list'), (a.resume, 'checkpoint')):
        if not os.path.isfile(path):
            sys.exit(f'demo.py: error: {what} {path} not found (a fresh clone ships assets/sample/ and pretrained.pth)')
    raw, converted = os.path.join(a.out, 'raw'), os.path.join(a.out, 'converted')
    t0 = time.time()
    test_argv = ['--filelist', filelist, '--data-root', a.sample, '--model-type', 'scratch', '--resume', a.resume,
                 '--save-path', raw, '--topk', str(a.topk), '--videoLen', str(a.videoLen), '--radius', str(a.radius),
                 '--temperature', str(a.temperature), '--cropSize', str(a.cropSize), '--workers', '0']
    if a.device:
        test_argv += ['--device', a.device]
    print('+ python test.py ' + ' '.join(test_argv), flush=True)
    if subprocess.run([sys.executable, os.path.join(ROOT, 'test.py')] + test_argv).returncode:
        sys.exit('demo.py: error: test.py failed')
    conv_argv = ['--in_folder', raw, '--out_folder', converted, '--dataset', a.sample, '--workers', '1']
    print('+ python eval/convert_davis.py ' + ' '.join(conv_argv), flush=True)
    if convert_davis.main(conv_argv):
        sys.exit('demo.py: error: convert_davis.py failed')
    eval_argv = ['--task', 'semi-supervised', '--results_path', converted, '--set', 'val', '--davis_path', a.sample,
                 '--force', '--workers', '1']
    print('+ python eval/evaluate_davis.py ' + ' '.join(eval_argv), flush=True)
    if evaluate_davis.main(eval_argv):
        sys.exit('demo.py: error: evaluate_davis.py failed')

    blends = sorted(((int(os.path.basename(p).split('_')[1]), p) for p in glob.glob(os.path.join(raw, '0_*_blend.jpg'))))
    sheet, gif = os.path.join(a.out, 'contact_sheet.png'), os.path.join(a.out, 'propagation.gif')
    contact_sheet(blends, sheet)
    animated_gif(blends, gif)
    print(f'\nDone in {time.time() - t0:.0f}s. Pictures:\n  {sheet}   (every few frames, predicted labels blended '
          f'over the image)\n  {gif}   (the whole clip)\n  {raw}/0_<t>_blend.jpg   (each frame)\n'
          f'Scores: {converted}/global_results-val.csv')
    return 0


if __name__ == '__main__':
    sys.exit(main())
