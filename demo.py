"""The quick-start demo: propagate the first-frame mask of a real clip through it with pretrained.pth, score the
result against the clip's ground truth, and draw it.

    python demo.py                       # writes demo_out/ and says where the pictures are

The clip is assets/hockey/: the first 40 frames of the DAVIS sequence "hockey" as an H.264 video, with its
ground-truth masks (DAVIS, CC BY-NC 4.0; assets/README). The demo runs what you would run on your own video,
``test.py --video hockey.mp4 --mask <frame 0's annotation>`` at the video's 854x480 (about two minutes of CPU
time; ``--max-side 480`` halves it, at a lower score), then scores the masks with the built-in DAVIS scorer
(eval/evaluate_davis.py) and draws a contact sheet and a GIF of the overlays.
--sample takes any folder laid out like assets/hockey/ (<seq>.mp4, Annotations/480p/<seq>/*.png,
ImageSets/2017/val.txt naming <seq>); scripts/make_demo_clip.py makes one from a DAVIS folder.
"""
import argparse
import glob
import os
import shlex
import subprocess
import sys
import time

from PIL import Image, ImageDraw

from crw.data.images import list_frames
from crw.eval import evaluate_davis
from crw.utils.arguments import OneLineParser
from crw.utils.misc import atomic_write

ROOT = os.path.dirname(os.path.abspath(__file__))


def get_args_parser():
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sample', default=os.path.join(ROOT, 'assets', 'hockey'),
                   help='folder with <seq>.mp4, Annotations/480p/<seq>/ and ImageSets/2017/val.txt naming <seq>')
    p.add_argument('--resume', default=os.path.join(ROOT, 'pretrained.pth'), help='checkpoint to propagate with')
    p.add_argument('--out', default=os.path.join(ROOT, 'demo_out'), help='where results and pictures go')
    p.add_argument('--device', default=None, help='cuda or cpu (default: cuda when available)')
    p.add_argument('--max-side', default=0, type=int,
                   help='propagate at most this many pixels on the longer side (0: the video\'s own size, 854x480, '
                        'about 2 min of CPU time; 480: about half that, at a lower score)')
    # README protocol settings
    p.add_argument('--topk', default=10, type=int)
    p.add_argument('--videoLen', default=20, type=int)
    p.add_argument('--radius', default=12, type=float)
    p.add_argument('--temperature', default=0.05, type=float)
    p.add_argument('--cropSize', default=-1, type=int)
    return p


def shown(path):
    """A path as the user can paste it: relative to the current folder when inside it."""
    rel = os.path.relpath(path)
    return path if rel.startswith('..') else rel


def contact_sheet(frame_paths, out_path, columns=6, rows=2, tile_width=None, colours=None):
    """Tile ``columns`` x ``rows`` evenly spaced frames (first and last included) of [(t, path)] into one PNG;
    tile_width: scale each frame to this width; colours: quantise the sheet to that many colours (smaller)."""
    n = min(len(frame_paths), columns * rows)
    chosen = [frame_paths[round(i * (len(frame_paths) - 1) / max(1, n - 1))] for i in range(n)]
    tiles = [Image.open(p).convert('RGB') for _, p in chosen]
    if tile_width:
        tiles = [t.resize((tile_width, round(t.height * tile_width / t.width)), Image.LANCZOS) for t in tiles]
    w, h = tiles[0].size
    rows = -(-len(tiles) // columns)
    sheet = Image.new('RGB', (columns * w, rows * h), 'white')
    for k, ((t, _), tile) in enumerate(zip(chosen, tiles)):
        x, y = (k % columns) * w, (k // columns) * h
        sheet.paste(tile, (x, y))
        ImageDraw.Draw(sheet).text((x + 4, y + 2), f'frame {t}', fill='white')
    if colours:
        sheet = sheet.quantize(colors=colours)
    with atomic_write(out_path) as f:
        sheet.save(f, format='PNG', optimize=True)


def animated_gif(frame_paths, out_path, fps=8):
    frames = [Image.open(p).convert('RGB').quantize(colors=255) for _, p in frame_paths]
    with atomic_write(out_path) as f:
        frames[0].save(f, format='GIF', save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)


def main(argv=None):
    a = get_args_parser().parse_args(argv)
    split = os.path.join(a.sample, 'ImageSets', '2017', 'val.txt')
    for path, what in ((split, 'sample'), (a.resume, 'checkpoint')):
        if not os.path.isfile(path):
            sys.exit(f'demo.py: error: {what} {path} not found (a fresh clone ships assets/hockey/ and pretrained.pth)')
    with open(split) as f:
        seq = next((line.strip() for line in f if line.strip()), '')
    video = os.path.join(a.sample, seq + '.mp4')
    masks = list_frames(os.path.join(a.sample, 'Annotations', '480p', seq), extensions=('.png',))
    if not seq or not os.path.isfile(video) or not masks:
        sys.exit(f'demo.py: error: {a.sample} must hold {seq or "<seq>"}.mp4 and Annotations/480p/{seq or "<seq>"}/ '
                 f'(the sequence named in {split})')
    t0 = time.time()
    test_cmd = [sys.executable, os.path.join(ROOT, 'test.py'), '--video', video, '--mask', masks[0], '--model-type',
                'scratch', '--resume', a.resume, '--save-path', a.out, '--topk', str(a.topk), '--videoLen',
                str(a.videoLen), '--radius', str(a.radius), '--temperature', str(a.temperature), '--cropSize',
                str(a.cropSize), '--save-blend', '--workers', '0', '--overwrite']   # demo_out is the demo's own
    if a.max_side:
        test_cmd += ['--max-side', str(a.max_side)]
    if a.device:
        test_cmd += ['--device', a.device]
    print('+ ' + shlex.join(shown(x) if os.path.exists(x) else x for x in test_cmd), flush=True)
    if subprocess.run(test_cmd).returncode:
        sys.exit('demo.py: error: test.py failed')
    eval_argv = ['--task', 'semi-supervised', '--results_path', a.out, '--set', 'val', '--davis_path', a.sample,
                 '--force', '--workers', '1']
    print('+ ' + shlex.join([shown(sys.executable), shown(os.path.join(ROOT, 'eval', 'evaluate_davis.py'))]
                            + [shown(x) if os.path.exists(x) else x for x in eval_argv]), flush=True)
    if evaluate_davis.main(eval_argv):
        sys.exit('demo.py: error: evaluate_davis.py failed')
    with open(os.path.join(a.out, 'global_results-val.csv')) as f:
        jf = float(f.read().splitlines()[1].split(',')[0])

    blends = [(int(os.path.splitext(os.path.basename(p))[0]), p)
              for p in sorted(glob.glob(os.path.join(a.out, seq + '_blend', '*.jpg')))]
    sheet, gif = os.path.join(a.out, 'contact_sheet.png'), os.path.join(a.out, 'propagation.gif')
    contact_sheet(blends, sheet, tile_width=427)
    animated_gif(blends, gif)
    print(f'\n{seq}: J&F-Mean {jf:.3f} over {len(blends)} frames, done in {time.time() - t0:.0f}s. Pictures:\n'
          f'  {shown(sheet)}   (every few frames, predicted masks over the video)\n'
          f'  {shown(gif)}   (the whole clip)\n'
          f'  {shown(os.path.join(a.out, seq + "_overlay.mp4"))}   (the overlay video)\n'
          f'  {shown(os.path.join(a.out, seq))}/<frame>.png   (the masks, DAVIS format)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
