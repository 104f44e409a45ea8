"""OpenMP thread policies on an idle and on a loaded machine: which default never loses much.

    python bench/threads.py [--data ../shared/data/davis-dev] [--rounds 2] [--load 0 2]

Workloads (each run in a fresh process, so the policy applies from the start):
  propagation   encoder + windowed propagation of --frames frames of a 854x480 video at the README protocol
                (davis-dev's first sequence with --data, else random frames), after the first frame; s/frame
  training      steps of the pretrained.pth recipe (dense 128x128 frames, clip-len 4, batch 8, layer4
                removed, build_optimizer's Adam) on random clips; s/step
Policies: spin (libgomp's default: idle threads spin for a while, 300000 iterations, before sleeping), passive
(OMP_WAIT_POLICY=PASSIVE: they sleep at once), spin 20000 (GOMP_SPINCOUNT=20000: a short spin), 1 thread
(OMP_NUM_THREADS=1).
--load N: N background processes multiplying matrices on one thread each while the runs go (0: whatever
else runs on the machine; record the load average). Runs are interleaved (round-robin over policies), and
the table gives the median of --rounds runs and the ratio to passive (> 1: slower than passive).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == '__main__' and not __package__:  # run by path: bench/, not the repository, is on sys.path
    sys.path.insert(0, ROOT)

POLICIES = {'spin (libgomp default)': {'GOMP_SPINCOUNT': None, 'OMP_WAIT_POLICY': None},
            'passive': {'OMP_WAIT_POLICY': 'PASSIVE'},
            'spin 20000': {'GOMP_SPINCOUNT': '20000', 'OMP_WAIT_POLICY': None},
            '1 thread': {'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'PASSIVE'}}


def worker_propagation(a):
    import torch
    from crw.propagation import Protocol, encode_frames, load_encoder, make_propagator, soft_to_index
    torch.manual_seed(0)
    enc = load_encoder(os.path.join(ROOT, 'pretrained.pth'), 'cpu')
    protocol = Protocol(topk=10, video_len=20, radius=12, temperature=0.05)
    if a.data:
        from crw.bench.propagation import davis_video
        with open(os.path.join(a.data, 'ImageSets', '2017', 'val.txt')) as f:
            name = f.readline().strip()
        v, first = davis_video(a.data, name)
        imgs = [v.frames[t][0] for t in range(a.frames + 1)]
    else:
        g = torch.Generator().manual_seed(0)
        imgs = [torch.randn(3, 480, 854, generator=g) for _ in range(a.frames + 1)]
        first = lambda hw: torch.nn.functional.one_hot(torch.zeros(hw, dtype=torch.long), 2).float()  # noqa: E731
    f0 = encode_frames(enc, imgs[0][None])[0]
    prop = make_propagator(f0, first(f0.shape[-2:]), protocol)
    t0 = time.perf_counter()
    for img in imgs[1:]:
        soft = prop.step(encode_frames(enc, img[None])[0])
        soft_to_index(soft, img.shape[-2:])
    return (time.perf_counter() - t0) / a.frames


def worker_training(a):
    import torch
    from crw.model import CRW
    from train import build_optimizer
    from crw.utils.arguments import train_args
    args = train_args(['--data-path', '.', '--img-size', '128', '--remove-layers', 'layer4', '--clip-len', '4',
                       '--temp', '0.05', '--dropout', '0.1', '--batch-size', '8', '--lr', '0.0001'])
    torch.manual_seed(0)
    model = CRW(args).train()
    opt = build_optimizer(model, args)
    x = torch.randn(8, 4, 3, 128, 128)
    times = []
    for i in range(a.steps + 1):
        t0 = time.perf_counter()
        _, loss, _ = model(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.mean(times[1:])


def burner():
    import torch
    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while True:
        a = torch.tanh(a @ a)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default='', help='davis-dev (DAVIS layout) for real frames; random frames if not given')
    p.add_argument('--frames', type=int, default=5, help='propagated frames per propagation run')
    p.add_argument('--steps', type=int, default=3, help='timed training steps per training run')
    p.add_argument('--rounds', type=int, default=2)
    p.add_argument('--load', type=int, nargs='+', default=[0], help='background processes (one row set per value)')
    p.add_argument('--workloads', nargs='+', default=['propagation', 'training'])
    p.add_argument('--no-write', action='store_true', help='do not append to bench/RESULTS.md')
    p.add_argument('--worker', default='', help=argparse.SUPPRESS)
    p.add_argument('--burner', action='store_true', help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.burner:
        return burner()
    if a.worker:
        print(json.dumps({'seconds': {'propagation': worker_propagation, 'training': worker_training}[a.worker](a)}))
        return
    from crw.bench.results import device_name, publish
    from crw.utils.misc import git_revision
    rows, t_start = [], time.time()
    for load in a.load:
        burners = [subprocess.Popen([sys.executable, __file__, '--burner'], env=dict(os.environ, OMP_NUM_THREADS='1'),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(load)]
        try:
            time.sleep(2 if load else 0)
            res = {(w, name): [] for w in a.workloads for name in POLICIES}
            loads = [os.getloadavg()[0]]
            for r in range(a.rounds):
                for w in a.workloads:
                    for name, env_change in POLICIES.items():
                        env = dict(os.environ)
                        for k, v in env_change.items():
                            env.pop(k, None) if v is None else env.__setitem__(k, v)
                        cmd = [sys.executable, __file__, '--worker', w, '--frames', str(a.frames), '--steps',
                               str(a.steps)] + (['--data', a.data] if a.data else [])
                        out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
                        if out.returncode:
                            raise SystemExit(f'{w} / {name} failed:\n{out.stderr[-2000:]}')
                        s = json.loads(out.stdout.strip().splitlines()[-1])['seconds']
                        res[(w, name)].append(s)
                        print(f'[threads] load {load} round {r} {w} {name}: {s:.3f} s', flush=True)
                        loads.append(os.getloadavg()[0])
        finally:
            for b in burners:
                b.kill()
                b.wait()
        for w in a.workloads:
            ref = statistics.median(res[(w, 'passive')])
            for name in POLICIES:
                m = statistics.median(res[(w, name)])
                unit = 's/frame' if w == 'propagation' else 's/step'
                rows.append(f"| {load} ({min(loads):.1f}-{max(loads):.1f}) | {w} | {name} | {m:.3f} {unit} | "
                            f"{m / ref:.2f} | {' '.join(f'{x:.2f}' for x in res[(w, name)])} |")
    head = (f"### threads — {time.strftime('%Y-%m-%d %H:%M')} — cpu: {device_name('cpu')}, git {git_revision()}\n"
            f"`python bench/threads.py {' '.join(sys.argv[1:])}` — {a.frames} propagated 854x480 frames "
            f"({'davis-dev' if a.data else 'random'}; README protocol, pretrained.pth), {a.steps} training steps "
            f"(dense 128², batch 8); median of {a.rounds} interleaved runs; {time.time() - t_start:.0f} s\n\n"
            "| background processes (load average) | workload | policy | median | / passive | runs |\n"
            "|---|---|---|---:|---:|---|\n")
    publish(head + '\n'.join(rows) + '\n', write=not a.no_write)


if __name__ == '__main__':
    main()
