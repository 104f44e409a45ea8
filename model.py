"""Contrastive Random Walk (CRW) model: ResNet encoder, node embeddings and the palindrome walk loss.

The release's behaviour (docs/differences.md lists the exceptions), computed faster: all B·T·N patches go
through the encoder as one batch straight from the input's memory layout; the T−2 palindrome walks come from
running prefix products (``walks``); the node embedding (patch mean, head, L2 norm) and the walk (affinities,
softmax, products, log, cross-entropy) run in float32 even under autocast; the encoder is channels_last-
and bf16-friendly.
Shapes: B batch, T frames, N nodes per frame, C channels (ResNet-18: 256 at layer3, 512 at layer4;
ResNet-50: 1024, 2048), H×W input patch/frame, h×w feature map (stride 8). State-dict keys are the
release's (``encoder.model.<torchvision ResNet keys>``, ``selfsim_fc.<i>.weight|bias``): checkpoints move
between the two implementations.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from crw.utils.encoder_weights import PRETRAINED_TYPES, SOURCES, encoder_state_dict
from crw.utils.errors import CRWError

EPS = 1e-20          # added to walk probabilities before the log (release value)
MASKED_LOGIT = -1e20  # value of a dropped edge's affinity (release value)
MODEL_TYPES = ('scratch', 'scratch_zeropad') + PRETRAINED_TYPES   # the release's seven


def min_input_size(model_type='scratch'):
    """Smallest square input (pixels) the encoder takes: its stride-8 map needs at least one cell (8 pixels),
    and with the reflect padding of 'scratch' every padded conv of layer2-layer4 needs a map of at least 2
    cells (reflect padding must be smaller than the input), hence 9."""
    return 9 if model_type == 'scratch' else 8


class ResNetTrunk(ResNet):
    """torchvision ResNet whose layers may be ``None`` (removed); forward returns the last feature map.

    Keeps torchvision's attribute names, so the state-dict keys are torchvision's.
    """

    LAYERS = ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4')

    def forward(self, x):
        """x [M, 3, H, W] -> feature map [M, C, h, w]."""
        for name in self.LAYERS:
            layer = getattr(self, name, None)
            if layer is not None:
                x = layer(x)
        return x


def make_resnet(model_type='scratch', remove_layers=(), weights='', trust=False):
    """ResNet trunk modified as the release: stride 1 in layer3/layer4 (output stride 8), no fc/avgpool.

    model_type: 'scratch' (ResNet-18, random init, reflect padding in every padded conv), 'scratch_zeropad'
    (zero padding), or a pretrained type (``utils.encoder_weights``: imagenet18, uvc are ResNet-18;
    imagenet50, moco50, timecycle ResNet-50), whose weights come from the local file ``weights`` (default
    places when empty), zero padding as torchvision. remove_layers: further layers to drop (e.g. ['layer4']
    at test time). ``trust``: see ``utils.checkpoint.load_checkpoint``.
    """
    if model_type not in MODEL_TYPES:
        raise CRWError(f"--model-type {model_type!r}: choose one of {', '.join(MODEL_TYPES)}")
    # Same construction (and RNG consumption) as torchvision.models.resnet18/50(weights=None).
    arch = SOURCES[model_type].arch if model_type in SOURCES else 'resnet18'
    net = ResNetTrunk(Bottleneck, [3, 4, 6, 3]) if arch == 'resnet50' else ResNetTrunk(BasicBlock, [2, 2, 2, 2])
    if model_type in PRETRAINED_TYPES:
        expected = {k: v.shape for k, v in net.state_dict().items() if not k.startswith('fc.')}
        net.load_state_dict(encoder_state_dict(model_type, weights, expected, trust), strict=False)

    # Stride 1 for every conv of layer3/layer4 (3x3 and the 1x1 downsample), no dilation: stride 8 overall.
    for name in ('layer3', 'layer4'):
        for m in getattr(net, name).modules():
            if isinstance(m, nn.Conv2d):
                m.stride = (1, 1)
    if model_type == 'scratch':
        # padding_mode is read at call time; the pad amounts were fixed at construction.
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding):
                m.padding_mode = 'reflect'

    for name in ['fc', 'avgpool'] + [l for l in (remove_layers or []) if l not in ('fc', 'avgpool')]:
        if not hasattr(net, name):
            raise CRWError(f"--remove-layers {name!r}: the ResNet has no such layer "
                             f"(choose from {', '.join(ResNetTrunk.LAYERS[4:])})")
        setattr(net, name, None)  # a None child vanishes from the state dict and is skipped in forward
    return net


class Encoder(nn.Module):
    """Applies the 2-D trunk ``self.model`` to every frame of a video (the release's ``From3D``).

    The attribute name ``model`` fixes the state-dict prefix ``encoder.model.``.
    """

    def __init__(self, trunk):
        super().__init__()
        self.model = trunk

    def _wants_channels_last(self):
        w = self.model.conv1.weight
        return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()

    def frames(self, x):
        """x [M, 3, H, W] -> maps [M, C, h, w]; converts to channels_last when the model is (one copy, the
        conv would make it anyway)."""
        if self._wants_channels_last():
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def forward(self, x):
        """x [B, 3, T, H, W] -> maps [B, C, T, h, w] (a permuted view; frames are folded into the batch)."""
        B, C, T, H, W = x.shape
        if self._wants_channels_last():
            # [B, T, H, W, C] contiguous viewed as [B*T, C, H, W] is channels_last: one copy for both moves
            x2 = x.permute(0, 2, 3, 4, 1).contiguous().flatten(0, 1).permute(0, 3, 1, 2)
        else:
            x2 = x.transpose(1, 2).reshape(B * T, C, H, W)
        m = self.model(x2)
        return m.unflatten(0, (B, T)).transpose(1, 2)


def _arg(args, name, default):
    v = getattr(args, name, default)
    return default if v is None else v


class CRW(nn.Module):
    """Contrastive Random Walk.

    ``CRW(args)`` reads (with defaults, so train and test namespaces both work): model_type ('scratch'),
    imagenet_weights ('': the weight file of a pretrained type, ``--encoder-weights``), trust_checkpoint
    (False), remove_layers ([]), head_depth (0), temp / temperature (0.07), dropout (edge
    dropout, 0), featdrop (0), flip (False), zero_diagonal (False). Nothing is device specific: the model
    follows its input's device.

    Nodes: with whole frames as input, every cell of the encoder's feature map is a node; with ``--frame-aug
    grid`` every patch is one (``embed``), the patches being cut from the frames by data/training/nodes.py.
    Edge dropout applies in training mode only (release: whenever dropout > 0).
    """

    def __init__(self, args, vis=None, encoder=None):
        super().__init__()
        self.edgedrop_rate = float(_arg(args, 'dropout', 0.0))
        self.featdrop_rate = float(_arg(args, 'featdrop', 0.0))
        temp = getattr(args, 'temp', None)
        self.temperature = float(temp if temp is not None else _arg(args, 'temperature', 0.07))
        self.flip = bool(_arg(args, 'flip', False))
        self.zero_diagonal = bool(_arg(args, 'zero_diagonal', False))
        # Release detail: the forward edge mask is written into the affinity in place, so the backward
        # transition also sees it (transposed) on top of its own mask: effective rate 1-(1-p)^2.
        self.shared_edge_mask = True
        self.vis = vis  # accepted for the release's signature; the model draws nothing itself

        # ``encoder``: an existing Encoder to train (test-time adaptation); no trunk is built then
        self.encoder = encoder if encoder is not None else Encoder(make_resnet(
            _arg(args, 'model_type', 'scratch'), list(_arg(args, 'remove_layers', [])),
            _arg(args, 'imagenet_weights', ''), bool(_arg(args, 'trust_checkpoint', False))))
        self.enc_hid_dim, self.map_scale = self._infer_dims()
        self.selfsim_fc = self._make_head(int(_arg(args, 'head_depth', 0)))
        self.featdrop = nn.Dropout(p=self.featdrop_rate)

    @torch.no_grad()
    def _infer_dims(self, size=16):
        """Encoder width and stride from a dummy forward in eval mode, leaving BatchNorm statistics as they
        are (release: training mode). 16 pixels: a 2x2 map at stride 8, the smallest the reflect-padded
        trunk takes, and cheap for ResNet-50."""
        was_training = self.encoder.training
        self.encoder.eval()
        w = self.encoder.model.conv1.weight
        out = self.encoder.model(torch.zeros(1, 3, size, size, device=w.device, dtype=w.dtype))
        self.encoder.train(was_training)
        return out.shape[1], size // out.shape[-1]

    def _make_head(self, depth):
        """depth >= 0: depth x (Linear(C, C) + ReLU), then Linear(C, 128); depth < 0: identity."""
        layers = []
        if depth >= 0:
            dims = [self.enc_hid_dim] * (depth + 1) + [128]
            for i, (d1, d2) in enumerate(zip(dims, dims[1:])):
                if i:
                    layers.append(nn.ReLU())
                layers.append(nn.Linear(d1, d2))
        return nn.Sequential(*layers)

    # ------------------------------------------------------------------ nodes
    def embed(self, frames):
        """frames [B, T, N, 3, H, W] -> (q [B, C, T, N'], maps).

        N > 1 (grid): a node is the spatial mean of its patch's map, N' = N.
        N == 1 (dense): every feature-map cell is a node, N' = h*w (row-major).
        q is the head output L2-normalised over C (float32, also under autocast). maps (views, no copy): grid
        [B, N, C, T, h, w]; dense [B, h*w, C, T, 1, 1] (the release's shapes).
        """
        B, T, N = frames.shape[:3]
        maps = self.encoder.frames(frames.flatten(0, 2))  # [B*T*N, C, h, w], one batch for all patches
        if self.featdrop_rate > 0:
            maps = self.featdrop(maps)
        C, h, w = maps.shape[1:]
        # Node embedding (patch mean, head, L2 norm) in float32 also under autocast: bf16 nodes moved the
        # affinities by up to 8.4e-3 (0.17 in logits at tau = 0.05), fp32 ones by 6.5e-3 (bench/amp_agreement.py).
        with torch.autocast(device_type=maps.device.type, enabled=False):
            if N == 1:
                nodes = maps.flatten(2).transpose(1, 2).float()  # [B*T, h*w, C]
                N = h * w
                maps_out = maps.unflatten(0, (B, T)).permute(0, 3, 4, 2, 1).reshape(B, N, C, T)[..., None, None]
            else:
                nodes = maps.float().mean((-2, -1))  # [B*T*N, C]
                maps_out = maps.unflatten(0, (B, T, N)).permute(0, 2, 3, 1, 4, 5)
            q = F.normalize(self.selfsim_fc(nodes), p=2, dim=-1)
        q = q.reshape(B, T, N, q.shape[-1]).permute(0, 3, 1, 2)  # [B, C, T, N]
        return q, maps_out

    def pixels_to_nodes(self, x):
        """x [B, N, 3, T, H, W] (the release's layout) -> (q [B, C, T, N'], maps); see ``embed``."""
        return self.embed(x.permute(0, 3, 1, 2, 4, 5))

    # ------------------------------------------------------------------ walks
    @staticmethod
    def _check_T(T):
        if T <= 2:
            raise ValueError(f"the contrastive random walk needs clips of at least 3 frames (got T={T}): "
                             "T-2 palindromes, the 0->1->0 cycle is not used")

    def affinity(self, q):
        """q [B, C, T, N] -> A [B, T-1, N, N] float32, A[:, t] = q_t^T q_{t+1} (cosine similarities)."""
        x = q.float().permute(0, 2, 3, 1)  # [B, T, N, C]
        with torch.autocast(device_type=q.device.type, enabled=False):
            return x[:, :-1] @ x[:, 1:].transpose(-1, -2)

    def draw_edge_masks(self, A):
        """Independent edge-dropout masks (True = dropped) for A [B, T-1, N, N] -> (forward, backward), both
        [B, T-1, N, N] bool, backward indexed like A_t^T.

        Drawn in the release's RNG order (all forward masks t = 0..T-2, then all backward ones; ``rand_like``
        of the transposed view fills memory in A_t's order), so on CPU a seed reproduces its masks exactly.
        """
        B, T1, N, M = A.shape
        u = torch.rand(2, T1, B, N, M, device=A.device)
        fwd = u[0].transpose(0, 1) < self.edgedrop_rate
        bwd = u[1].transpose(0, 1).transpose(-1, -2) < self.edgedrop_rate
        return fwd, bwd

    def transitions(self, q, masks=None):
        """q [B, C, T, N] -> (P, Pbar), each [B, T-1, N, N] float32, rows summing to 1.

        P[:, t] = softmax_row(A_t / tau) (frame t -> t+1), Pbar[:, t] = softmax_row(A_t^T / tau) (t+1 -> t).
        masks: optional (forward, backward) bool masks as from ``draw_edge_masks`` (either may be None);
        by default they are drawn when training with dropout > 0.
        """
        A = self.affinity(q)
        with torch.autocast(device_type=A.device.type, enabled=False):
            if self.zero_diagonal:
                eye = torch.eye(A.shape[-2], A.shape[-1], dtype=torch.bool, device=A.device)
                A = A.masked_fill(eye, 0.0)  # same as A * (1 - I)
            if masks is None and self.training and self.edgedrop_rate > 0:
                masks = self.draw_edge_masks(A)
            fwd_mask, bwd_mask = masks if masks is not None else (None, None)
            Ab = A.transpose(-1, -2)
            if fwd_mask is not None:
                A = A.masked_fill(fwd_mask, MASKED_LOGIT)
                if self.shared_edge_mask:
                    Ab = A.transpose(-1, -2)
            if bwd_mask is not None:
                Ab = Ab.masked_fill(bwd_mask, MASKED_LOGIT)
            return F.softmax(A / self.temperature, dim=-1), F.softmax(Ab / self.temperature, dim=-1)

    def walks(self, P, Pbar):
        """P, Pbar [B, T-1, N, N] -> (W [T-2, B, N, N], names).

        W[i-1] = P_0 ... P_i Pbar_i ... Pbar_0 for i = 1..T-2 (names 'r{i}'); with ``flip``
        Pbar_0 ... Pbar_i P_i ... P_0 ('l{i}'). Both halves are running products: the left half grows on the
        right (L_i = L_{i-1} X_i), the right half on the left (R_i = Y_i R_{i-1}, carried transposed so one
        batched matmul advances both), and a last batched matmul forms every L_i R_i at once.
        """
        T1 = P.shape[1]
        self._check_T(T1 + 1)
        X, Y = (Pbar, P) if self.flip else (P, Pbar)
        with torch.autocast(device_type=P.device.type, enabled=False):
            steps = torch.stack((X, Y.transpose(-1, -2)), 0)  # [2, B, T-1, N, N]
            S, halves = steps[:, :, 0], []
            for i in range(1, T1):
                S = S @ steps[:, :, i]  # S = [L_i, R_i^T]
                halves.append(S)
            H = torch.stack(halves, 0)  # [T-2, 2, B, N, N]
            W = H[:, 0] @ H[:, 1].transpose(-1, -2)
        names = [f"{'l' if self.flip else 'r'}{i}" for i in range(1, T1)]
        return W, names

    @staticmethod
    def _cycle_xent(W):
        """W [K, B, N, N] -> (logits log(W + 1e-20), cross-entropy per start node [K, B, N]; row n's target is n)."""
        logits = torch.log(W + EPS)
        return logits, logits.logsumexp(-1) - logits.diagonal(dim1=-2, dim2=-1)

    @torch.no_grad()
    def walk_details(self, q):
        """What the walk does on q [B, C, T, N], for pictures (``--visualize``); costs nothing unless called.

        Returns {'A': affinities [B, T-1, N, N], 'P': transitions t -> t+1 [B, T-1, N, N], 'W': palindrome
        walks [T-2, B, N, N] (W[k, b, n] = where a walk from node n ends), 'xent': per-start-node cycle loss
        [T-2, B, N], 'names': the walks' names}, all float32. Edge dropout is not applied and nothing random is
        drawn, whatever the mode, so calling it leaves training (and its RNG stream) unchanged.
        """
        self._check_T(q.shape[2])
        P, Pbar = self.transitions(q, masks=(None, None))
        W, names = self.walks(P, Pbar)
        with torch.autocast(device_type=W.device.type, enabled=False):
            _, xent = self._cycle_xent(W)
        return {'A': self.affinity(q), 'P': P, 'W': W, 'xent': xent, 'names': names}

    def walk_loss(self, q, size=None, masks=None):
        """q [B, C, T, N] (unit-norm nodes) -> (loss, diagnostics).

        Per walk: cross-entropy of log(W + 1e-20) over the B*N rows, target the start node (identity);
        accuracy: argmax hits the start node. loss = mean over the T-2 walks (0-dim float32 tensor).
        diagnostics: {f"{size} xent cyc {name}", f"{size} acc cyc {name}"} -> detached 0-dim tensors
        (size = input patch/frame height; omitted from the key when None). masks: see ``transitions``.
        """
        self._check_T(q.shape[2])
        P, Pbar = self.transitions(q, masks)
        W, names = self.walks(P, Pbar)
        with torch.autocast(device_type=W.device.type, enabled=False):
            logits, node_xent = self._cycle_xent(W)
            xent = node_xent.mean((1, 2))  # [K]
            target = torch.arange(logits.shape[-1], device=logits.device)
            acc = (logits.argmax(-1) == target).float().mean((1, 2))
            loss = xent.mean()
        prefix = '' if size is None else f'{size} '
        diags = {}
        xd, ad = xent.detach(), acc.detach()
        for k, name in enumerate(names):
            diags[f'{prefix}xent cyc {name}'] = xd[k]
            diags[f'{prefix}acc cyc {name}'] = ad[k]
        return loss, diags

    def forward(self, video, just_feats=False):
        """video [B, T, N*3, H, W] (grid: N patches; dense: N = 1 whole frame) -> (q, loss, diagnostics).

        q [B, 128, T, N'] (N' = N, or h*w in dense mode); loss 0-dim; diagnostics keyed by H (see
        ``walk_loss``). just_feats=True (release option) returns (q, maps) instead, maps as in ``embed``
        for a grid and q viewed as [B, C, T, h, w] for dense input.
        """
        B, T, NC, H, W = video.shape
        if NC % 3:
            raise ValueError(f'input channels {NC} are not a multiple of 3 (expected [B, T, N*3, H, W])')
        N = NC // 3
        q, maps = self.embed(video.reshape(B, T, N, 3, H, W))
        if just_feats:
            if N > 1:
                return q, maps
            h, w = -(-H // self.map_scale), -(-W // self.map_scale)
            return q, q.unflatten(-1, (h, w))
        loss, diags = self.walk_loss(q, size=H)
        return q, loss, diags
