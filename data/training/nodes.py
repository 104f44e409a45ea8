"""The walk's nodes in grid mode (``--frame-aug grid``): a training clip cut into the patches the model embeds.

Every frame [C, H, W] is cut into the row-major grid of P×P windows at stride P/2 (``grid_positions``: 7×7
windows of 64×64 for a 256×256 frame; window (r, c) covers rows rP/2 : rP/2+P, cols cP/2 : cP/2+P). Each
window is random-resized-cropped back to P×P (``crop_patches``; the boxes are drawn by ``BatchAugment``) and
is one node of that frame: ``model.CRW.embed`` averages the patch's feature map into the node's embedding.
The model input is then [B, T, N·3, P, P], channel n·3 + c being colour c of patch n.

Without the grid (dense mode) nothing is cut: the whole frame [B, T, 3, H, W] goes in and every cell of the
encoder's stride-8 feature map is a node (``CRW.embed``). ``BatchAugment`` (gpu_augment.py) calls
``crop_patches`` on the device, after the per-frame colour jitter and before the normalisation.
"""
import torch
import torch.nn.functional as F


def grid_positions(height, width, patch, stride=None):
    """Top-left corners ``[(y, x)]`` of the grid windows, row-major."""
    stride = stride or patch // 2
    ny, nx = (height - patch) // stride + 1, (width - patch) // stride + 1
    return [(r * stride, c * stride) for r in range(ny) for c in range(nx)]


def crop_patches(x, box, patch, flip=None, layout='patches'):
    """Random-resized-crop every grid window of ``x`` [n, C, H, W] (float) to ``patch``×``patch``.

    ``box`` = (top, left, h, w) tensors [n·N] in window coordinates; ``flip`` optional bool [n·N]. Returns
    [n, N, C, P, P] (``layout='patches'``) or grid_sample's raw [n, C, N·P, P] (``layout='raw'``). Sample
    positions are clamped to the box, so a patch equals its box cut out and resized bilinearly (PIL's
    behaviour at the crop border); all windows are one batched ``grid_sample``.
    """
    n, C, H, W = x.shape
    P = patch
    pos = torch.tensor(grid_positions(H, W, P), dtype=torch.float32, device=x.device)  # [N, 2]
    N = pos.shape[0]
    top, left, h, w = (t.to(device=x.device, dtype=torch.float32).view(n, N, 1) for t in box)
    o = (torch.arange(P, device=x.device, dtype=torch.float32) + 0.5) / P                # [P]
    y0 = pos[:, 0].view(1, N, 1) + top
    x0 = pos[:, 1].view(1, N, 1) + left
    ys = torch.minimum(torch.maximum(y0 + o * h - 0.5, y0), y0 + h - 1)                # [n, N, P]
    xs = torch.minimum(torch.maximum(x0 + o * w - 0.5, x0), x0 + w - 1)
    if flip is not None:
        xs = torch.where(flip.to(x.device).view(n, N, 1), xs.flip(-1), xs)
    gy = (2 * ys + 1) / H - 1
    gx = (2 * xs + 1) / W - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), dim=-1)  # [n,N,P,P,2]
    out = F.grid_sample(x, grid.view(n, N * P, P, 2), mode='bilinear', padding_mode='border',
                        align_corners=False)                                           # [n, C, N*P, P]
    if layout == 'raw':
        return out
    return out.view(n, C, N, P, P).transpose(1, 2)
