"""Optional visualisation (--visualize): scalars to wandb (offline unless configured); a visdom connection is
opened when a server runs. Neither package is imported unless asked for; a missing package or server is one
warning, never a crash."""
import os
import warnings


class Visualizer:
    def __init__(self, args):
        self.wandb = self.vis = None
        try:
            import wandb
            os.environ.setdefault('WANDB_MODE', 'offline')
            self.wandb = wandb.init(project='crw', name=os.path.basename(os.path.normpath(args.output_dir)),
                                    dir=args.output_dir, config=vars(args), resume='allow')
        except Exception as e:  # noqa: BLE001 - any wandb failure must not stop training
            warnings.warn(f'--visualize: wandb unavailable ({type(e).__name__}: {e}); scalars are not logged there')
        try:
            import visdom
            vis = visdom.Visdom(server=f'http://{args.server}', port=args.port, raise_exceptions=True,
                                use_incoming_socket=False)
            if vis.check_connection(timeout_seconds=2):
                self.vis = vis
            else:
                raise ConnectionError(f'no visdom server at {args.server}:{args.port}')
        except Exception as e:  # noqa: BLE001
            warnings.warn(f'--visualize: visdom unavailable ({type(e).__name__}: {e}); nothing is sent there. '
                          f'Start one with: python -c "from visdom.server.run_server import main; main()" '
                          f'-port {args.port} -bind_local')

    def log(self, scalars, step):
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self):
        if self.wandb is not None:
            self.wandb.finish()
