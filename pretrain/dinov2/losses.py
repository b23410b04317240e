"""DINOv2 losses: DINO (CLS) cross-entropy, iBOT masked-patch cross-entropy, KoLeo, and teacher normalisation.

Teacher targets come from :class:`TeacherNormalizer`, shared by DINO and iBOT:

* centring: ``softmax((t - center) / T)``; ``update_center`` then sets
  ``center <- m * center + (1 - m) * mean(t)`` where the mean is over the GLOBAL batch (one all-reduce of the
  per-rank sum and row count). Unlike the reference this is synchronous, but the order of use is the same: a
  batch is centred with the centre built from the previous batches.
* Sinkhorn-Knopp (SwAV), fp32: ``Q = exp(t / T)^T`` (K x B), divided by its total, then ``n_iterations`` times
  rows -> 1/K (row sums all-reduced) and columns -> 1/B; finally ``x B`` so every sample's column sums to 1.
  B is the global number of valid rows. The global max of ``t / T`` is subtracted before ``exp``; the total-sum
  normalisation makes this an exact no-op mathematically while preventing overflow.

All collectives run only when ``torch.distributed`` is initialised, so everything works in a single process.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

_TINY = torch.finfo(torch.float32).tiny


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(t: torch.Tensor, op=None) -> torch.Tensor:
    if _dist_on():
        dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t


def _valid_rows(x: torch.Tensor, n_valid) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(row mask [M] or None, local count as fp32 scalar tensor) for the first ``n_valid`` rows of ``x``."""
    m = x.shape[0]
    if n_valid is None:
        return None, torch.tensor(float(m), device=x.device)
    n = torch.as_tensor(n_valid, device=x.device).reshape(()).float()
    mask = torch.arange(m, device=x.device) < n
    return mask, n


class TeacherNormalizer(nn.Module):
    """Centring (EMA centre buffer) and Sinkhorn-Knopp normalisation of teacher logits ``[M, K]``.

    ``n_valid`` (int or 0-d tensor, optional) marks only the first ``n_valid`` rows as real samples (the rest is
    padding, e.g. iBOT's fixed-size buffer of masked tokens); padded rows get all-zero targets from SK and are
    ignored by the centre update. No host synchronisation is needed for a tensor ``n_valid``.
    """

    def __init__(self, out_dim: int, center_momentum: float = 0.9):
        super().__init__()
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.out_dim = out_dim
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim, dtype=torch.float32))

    def _check(self, t: torch.Tensor):
        if t.dim() != 2 or t.shape[-1] != self.out_dim:
            raise ValueError(f"teacher output must be [N, {self.out_dim}] (N samples x prototypes), "
                             f"got {tuple(t.shape)}")

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """``softmax((t - center) / teacher_temp)`` in fp32 with the current centre."""
        if teacher_output.shape[-1] != self.out_dim:
            raise ValueError(f"teacher output must end in {self.out_dim} prototypes, got {tuple(teacher_output.shape)}")
        # one temporary ``t / T - c / T`` (a single pass) and PyTorch's fused softmax
        inv_t = 1.0 / teacher_temp
        return F.softmax(torch.add(self.center * -inv_t, teacher_output.float(), alpha=inv_t), dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor, n_valid=None) -> None:
        """Synchronous EMA of the centre with the mean of ``teacher_output`` over the global batch."""
        t = teacher_output.float().reshape(-1, self.out_dim)
        mask, count = _valid_rows(t, n_valid)
        if mask is not None:
            t = t * mask.unsqueeze(1)
        stats = torch.cat([t.sum(0), count.reshape(1)])  # one collective for sum and count
        _all_reduce(stats)
        total = stats[-1]
        batch_center = (stats[:-1] / total.clamp_min(1.0)).unsqueeze(0)
        new_center = self.center * self.center_momentum + batch_center * (1.0 - self.center_momentum)
        # keep the centre when the global batch is empty (e.g. no masked patch anywhere); no host sync
        self.center.copy_(torch.where(total > 0, new_center, self.center))

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3,
                               n_valid=None) -> torch.Tensor:
        """SK-normalised targets ``[M, K]`` (fp32): each valid row sums to 1, each prototype gets mass B/K."""
        self._check(teacher_output)
        t = teacher_output.float()
        mask, count = _valid_rows(t, n_valid)
        M, K = t.shape
        # global max of t / T over valid rows (T > 0): subtracted before exp, an exact no-op after normalising
        row_max = t.amax(dim=1) if M else t.new_zeros(0)
        if mask is not None:
            row_max = row_max.masked_fill(~mask, float("-inf"))
        gmax = row_max.max() if M else t.new_tensor(float("-inf"))
        gmax = _all_reduce(gmax.clone(), dist.ReduceOp.MAX if _dist_on() else None)
        if not torch.isfinite(gmax):
            gmax = torch.zeros_like(gmax)
        P = torch.sub(t, gmax).mul_(1.0 / teacher_temp).exp_()  # [M, K], the only full-size buffer
        if mask is not None:
            P.masked_fill_(~mask.unsqueeze(1), 0.0)  # padding rows may hold anything (even inf after exp)
        # Q = diag(a) P^T diag(b) (K x M) is never materialised: each normalisation of the reference (total,
        # prototype rows, sample columns) only rescales a or b, so one iteration is two matrix-vector products.
        # A row (column) whose sum is below the smallest normal float is treated as empty (scale 0), where the
        # reference would divide by that tiny value; both give it (numerically) zero mass.
        valid = mask.to(P.dtype) if mask is not None else P.new_ones(M)  # padded samples: b = 0 (zero columns)
        B = _all_reduce(count.clone()).clamp_min(1.0)
        proto = _all_reduce(valid @ P)  # [K]: prototype sums of P^T diag(b)
        a = P.new_ones(K) / _all_reduce(proto.sum()).clamp_min(_TINY)
        b = valid
        for i in range(n_iterations):
            if i:
                proto = _all_reduce(b @ P)
            a = _safe_reciprocal(proto) / K  # prototype rows of Q -> 1/K
            b = valid * _safe_reciprocal(P @ a) / B  # sample columns of Q -> 1/B
        return P.mul_(b.unsqueeze(1)).mul_((a * B).unsqueeze(0))  # (Q * B)^T: each valid row sums to 1


def _safe_reciprocal(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= _TINY, 1.0 / x.clamp_min(_TINY), torch.zeros_like(x))


class _SoftCrossEntropy(torch.autograd.Function):
    """Per-row ``-sum_k t_k log_softmax(s / T)_k = sum(t) * logsumexp(s / T) - t . s / T`` (targets ``t`` constant).

    One ``[R, K]`` buffer forward (``exp(s/T - max)``, kept for the backward) and one backward:
    ``ds = g / T * (sum(t) * softmax(s / T) - t)``. Autograd through ``log_softmax`` allocates about four of each.
    """

    @staticmethod
    def forward(ctx, s, t, temp: float):
        inv_t = 1.0 / temp
        dot = torch.linalg.vecdot(t, s) * inv_t  # [R]
        t_sum = t.sum(dim=-1)
        m = s.amax(dim=-1, keepdim=True)
        e = torch.add(m * -inv_t, s, alpha=inv_t).exp_()  # exp(s / T - max / T), one pass before the exp
        z = e.sum(dim=-1, keepdim=True)
        lse = torch.log(z).squeeze(-1) + m.squeeze(-1) * inv_t
        ctx.save_for_backward(e, z, t, t_sum)
        ctx.inv_t = inv_t
        return t_sum * lse - dot

    @staticmethod
    def backward(ctx, g):
        e, z, t, t_sum = ctx.saved_tensors
        g = g * ctx.inv_t
        ds = torch.mul(e, (g * t_sum).unsqueeze(1) / z).addcmul_(t, g.unsqueeze(1), value=-1.0)
        return ds, None, None


def _cross_entropy(teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float) -> torch.Tensor:
    """Per-row ``-sum_k t_k log_softmax(s / T_s)_k`` (targets are constants)."""
    s, t = student_logits.float(), teacher_probs.float().detach()
    if s.dim() != 2 or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return -(t * F.log_softmax(s / student_temp, dim=-1)).sum(dim=-1)
    return _SoftCrossEntropy.apply(s, t.contiguous(), student_temp)


class DINOLoss(TeacherNormalizer):
    """DINO cross-entropy between student CLS logits and (centred or SK) teacher probabilities."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__(out_dim, center_momentum)
        self.student_temp = student_temp

    def forward(self, student_output_list: Sequence[torch.Tensor],
                teacher_out_softmaxed_centered_list: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sum over every (student chunk, teacher chunk) pair of the batch-mean CE (reference semantics)."""
        total = 0.0
        for s in student_output_list:
            lsm = F.log_softmax(s.float() / self.student_temp, dim=-1)
            for t in teacher_out_softmaxed_centered_list:
                if t.shape != s.shape:
                    raise ValueError(f"student chunk {tuple(s.shape)} and teacher chunk {tuple(t.shape)} differ")
                total = total - (t.float() * lsm).sum(dim=-1).mean()
        return total

    def crossview_loss(self, student_global, student_local, teacher_probs, n_global: int = 2):
        return dino_crossview_loss(student_global, student_local, teacher_probs, n_global, self.student_temp)


def dino_crossview_loss(student_global: torch.Tensor, student_local: torch.Tensor | None,
                        teacher_probs: torch.Tensor | Sequence[torch.Tensor], n_global: int = 2,
                        student_temp: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO loss over all (student view, teacher view) pairs except same-view pairs, as in DINOv2.

    Args:
        student_global: student head logits of the global crops, ``[n_global * B, K]``, crop-major
            (all images' crop 0, then crop 1, ...).
        student_local: student logits of the local crops ``[n_local * B, K]`` (crop-major) or None.
        teacher_probs: teacher targets of the global crops in the SAME natural crop-major order
            (``[n_global * B, K]`` or a list of ``n_global`` tensors ``[B, K]``); not swapped.
    Returns:
        ``(global_term, local_term)``: the sums of per-pair batch-mean CEs over (global s_i, teacher t_j, i != j)
        and over (local s_v, teacher t_j), both divided by ``n_global*(n_global-1) + max(n_local*n_global, 1)``,
        so their sum is the mean over all cross-view pairs (the reference's ``/ 18`` for 2 globals + 8 locals).
    """
    if isinstance(teacher_probs, (list, tuple)):
        if len(teacher_probs) != n_global:
            raise ValueError(f"teacher_probs has {len(teacher_probs)} views, expected n_global={n_global}")
        teacher = list(teacher_probs)
    else:
        if teacher_probs.shape[0] % n_global:
            raise ValueError(f"teacher_probs rows ({teacher_probs.shape[0]}) not divisible by n_global={n_global}")
        teacher = list(teacher_probs.chunk(n_global))
    B = teacher[0].shape[0]
    if student_global.shape[0] != n_global * B:
        raise ValueError(f"student_global has {student_global.shape[0]} rows, expected n_global*B = {n_global * B}")
    n_local = 0
    if student_local is not None and student_local.numel():
        if student_local.shape[0] % B:
            raise ValueError(f"student_local rows ({student_local.shape[0]}) not a multiple of the batch B={B}")
        n_local = student_local.shape[0] // B
    n_terms = n_global * (n_global - 1) + max(n_local * n_global, 1)
    t_sum = torch.stack([t.float() for t in teacher]).sum(0)  # sum_j t_j: linearity of the CE in the target

    global_term = student_global.new_zeros((), dtype=torch.float32)
    if n_global > 1:
        for i, s in enumerate(student_global.chunk(n_global)):
            # sum over j != i of mean_b CE(t_j, s_i) == mean_b CE(sum_{j != i} t_j, s_i)
            global_term = global_term + _cross_entropy(t_sum - teacher[i].float(), s, student_temp).mean()
    local_term = student_global.new_zeros((), dtype=torch.float32)
    if n_local:
        for s in student_local.chunk(n_local):
            local_term = local_term + _cross_entropy(t_sum, s, student_temp).mean()
    return global_term / n_terms, local_term / n_terms


class iBOTPatchLoss(TeacherNormalizer):
    """iBOT cross-entropy on masked patch tokens; centring / SK over masked tokens only."""

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__(patch_out_dim, center_momentum)
        self.student_temp = student_temp

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output, teacher_temp, n_iterations: int = 3, n_valid=None,
                               n_masked_patches_tensor=None):
        """SK with B = the global number of masked patches (``n_masked_patches_tensor`` valid rows, rest padding)."""
        if n_valid is None:
            n_valid = n_masked_patches_tensor
        return super().sinkhorn_knopp_teacher(teacher_output, teacher_temp, n_iterations, n_valid)

    def forward_masked(self, student_patch_tokens_masked: torch.Tensor, teacher_patch_tokens_masked: torch.Tensor,
                       student_masks_flat: torch.Tensor, n_masked_patches=None,
                       masks_weight: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_p CE_p * w_p / n_images``; ``w_p = 1/#masked patches of p's image``: mean over masked patches per
        image, averaged over ALL images (including unmasked ones).

        ``student/teacher_patch_tokens_masked``: ``[M, K]`` tokens at the masked positions, in the order of
        ``student_masks_flat[b].nonzero()`` image by image (rows past ``n_masked_patches`` are padding).
        ``student_masks_flat``: bool ``[n_images, N]``.
        """
        if student_masks_flat.dim() != 2 or student_masks_flat.dtype != torch.bool:
            raise ValueError(f"student_masks_flat must be bool [n_images, n_patches], got "
                             f"{student_masks_flat.dtype} {tuple(student_masks_flat.shape)}")
        loss = _cross_entropy(teacher_patch_tokens_masked, student_patch_tokens_masked, self.student_temp)
        if masks_weight is None:
            per_image = 1.0 / student_masks_flat.sum(-1).clamp(min=1.0)
            masks_weight = per_image.unsqueeze(-1).expand_as(student_masks_flat)[student_masks_flat]
        if n_masked_patches is not None:
            loss = loss[:n_masked_patches]
            masks_weight = masks_weight[:n_masked_patches]
        if loss.shape[0] != masks_weight.shape[0]:
            raise ValueError(f"{loss.shape[0]} masked tokens but {masks_weight.shape[0]} mask weights; pass "
                             "n_masked_patches when the token buffers are padded")
        return (loss * masks_weight.float()).sum() / student_masks_flat.shape[0]


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy regulariser: ``-mean_i log(d_i + eps)`` on L2-normalised rows, where ``d_i`` is
    the distance of row i to its nearest other row (found by max dot product, diagonal excluded).

    Computed in fp32 with autocast disabled: half precision is what made the reference return ``inf`` (its 1e-8
    eps underflows in fp16). Duplicates (distance 0) are guarded with ``eps = 1e-8`` (reference value) twice:
    ``d_i = sqrt(||x_i - x_nn||^2 + eps^2)`` and the ``+ eps`` in the log. An exact duplicate therefore adds
    ``-log(2 eps)`` (about 19.8) to the sum, never ``inf``, and gets a zero gradient (there is no direction to push
    it). Values differ from the reference only by O(eps). Near-duplicates keep KoLeo's inherent ~1/(n d)
    gradient; raise ``eps`` if that is a problem.
    """

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, student_output: torch.Tensor) -> torch.Tensor:
        if student_output.dim() != 2 or student_output.shape[0] < 2:
            raise ValueError("KoLeo needs at least 2 vectors [n >= 2, D] per call (per-GPU global-crop batch); "
                             f"got {tuple(student_output.shape)}. Use a per-GPU batch >= 2 or koleo_loss_weight=0")
        with torch.autocast(device_type=student_output.device.type, enabled=False):
            x = F.normalize(student_output.float(), p=2, dim=-1, eps=self.eps)
            with torch.no_grad():
                dots = x @ x.t()
                dots.fill_diagonal_(-2.0)  # below any cosine, so a row is never its own neighbour
                nn_idx = dots.argmax(dim=1)
            sq = (x - x[nn_idx]).pow(2).sum(dim=-1)
            dist_nn = torch.sqrt(sq + self.eps ** 2)
            return -torch.log(dist_nn + self.eps).mean()
