"""SNodeViT-style encoder: a ViT whose depth is a stochastic differential equation over tokens.

The seed repository (kartikpaliwal/SNodeViT) is not retrievable; only its README head is (backbones.md section 2).
This is our own design following that README and Primal-Attention (Chen et al., NeurIPS 2023):

* Tokens: stride-p patch embedding + cls token + learned positional embedding (bicubic-resized to any grid).
* Depth: ``dX = f(X, t) dt + G(t) dW`` on t in [0, t_end], integrated with ``depth`` steps of Euler-Maruyama
  (``solver="euler"``) or stochastic Heun (``solver="heun"``, 2nd order in dt for the drift; exact for additive
  noise in the Stratonovich/Ito sense since G does not depend on X).
* Drift ``f(X, t) = A_t(LN(X)) + MLP_t(LN(X + A_t(LN(X))))`` is one network shared by all steps; its time
  dependence theta(t) comes from :class:`TimeNet` (sinusoidal embedding of t -> MLP), which outputs
  (i) softmax weights alpha(t) over ``num_weight_basis`` weight sets of every linear layer (a Galerkin-style
  expansion ``W(t) = sum_m alpha_m(t) W_m``), (ii) the KSVD singular values lambda(t) per head, (iii) a
  per-channel offset of the diffusion.
* Attention ``A_t = sum_i lambda_i(t) psi_i (x) phi_i`` is fixed-rank KSVD attention in the PRIMAL form
  (Primal-Attention): psi = e = q W_e|X, phi = r = k W_r|X with q, k L2-normalised per head and
  ``W_e|X = X~^T W_e`` from ``rank*rank_multi`` tokens X~ sampled on a linspace. The head output is
  ``[psi diag(lambda) (phi^T v), phi diag(lambda) (psi^T v)] / N`` (A v and A^T v, the two KSVD sides), computed
  in O(N r d) - the N x N matrix is never formed.
* Diffusion ``G(t) = sigma_max * sigmoid(sigma_logit + s(t))`` per channel (bounded, learnable). Noise is on in
  ``train()``, off in ``eval()`` unless sampling is requested (:meth:`sampling`, :meth:`forward_with_uncertainty`),
  and drawn from a ``torch.Generator`` when one is given (reproducible).
* ``model.ksvd_loss()`` returns the KSVD regulariser of the last ``forward_features`` call (mean over steps):
  ``(1/2 mean||e diag(lambda)||^2 + 1/2 mean||r diag(lambda)||^2 - mean Tr(W_e|X^T W_r|X))^2``.

Variants (README table: dim/depth(=integration steps)/heads/basis(=KSVD rank)): tiny 96/6/3/8, small 192/8/4/16,
base 384/12/6/24, large 768/16/12/32. The README's counts scale with dim^2 and not with depth (~130 dim^2), which
fits weights shared across time steps; we reach them with ``num_weight_basis=10`` weight sets, ``mlp_ratio=3.75``,
patch 16 at 224 px and 10 classes: 1.27M / 4.88M / 19.1M / 75.6M (see tests/seeds/test_param_counts.py).

Contract: standard ViT tokens (cls + patches, no registers); masks replace patch embeddings by ``mask_token``.
"""
from __future__ import annotations

import contextlib
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import PatchEmbed
from .base import Encoder
from .registry import register_encoder
from .vit import interpolate_grid_embedding


class TimeMixedLinear(nn.Module):
    """Linear layer with time-dependent weights ``W(t) = sum_m alpha_m(t) W_m`` (``alpha`` from TimeNet)."""

    def __init__(self, in_features: int, out_features: int, num_basis: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_basis, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(num_basis, out_features))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def mixed(self, alpha: torch.Tensor):
        return torch.einsum("m,moi->oi", alpha, self.weight), alpha @ self.bias

    def forward(self, x, alpha):
        w, b = self.mixed(alpha.to(self.weight.dtype))
        return F.linear(x, w.to(x.dtype), b.to(x.dtype))


def sinusoidal_embedding(t: float, dim: int, max_freq: float, device=None) -> torch.Tensor:
    """``[sin(w_i t), cos(w_i t)]`` with ``dim/2`` frequencies geometric from 1 to ``max_freq`` rad per unit t."""
    half = dim // 2
    freqs = max_freq ** (torch.arange(half, dtype=torch.float32, device=device) / max(half - 1, 1))
    ang = freqs * float(t)
    return torch.cat([ang.sin(), ang.cos()])


class TimeNet(nn.Module):
    """t -> sinusoidal embedding -> MLP -> (alpha(t) weight mixture, lambda(t) per head/rank, diffusion offset)."""

    def __init__(self, time_dim: int, hidden: int, num_basis: int, num_heads: int, rank: int, dim: int,
                 max_freq: float):
        super().__init__()
        self.time_dim, self.max_freq = time_dim, max_freq
        self.sizes = (num_basis, num_heads * rank, dim)
        self.num_heads, self.rank = num_heads, rank
        self.fc1 = nn.Linear(time_dim, hidden)
        self.fc2 = nn.Linear(hidden, sum(self.sizes))
        nn.init.trunc_normal_(self.fc1.weight, std=0.02)
        nn.init.trunc_normal_(self.fc2.weight, std=0.02)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, t: float):
        emb = sinusoidal_embedding(t, self.time_dim, self.max_freq, self.fc1.weight.device).to(self.fc1.weight.dtype)
        out = self.fc2(F.silu(self.fc1(emb)))
        mix, lam, sig = out.split(self.sizes)
        return {"alpha": mix.softmax(-1), "lam": 1.0 + lam.view(self.num_heads, self.rank), "sigma_offset": sig}


def sample_token_indices(n_tokens: int, n_samples: int, device=None) -> torch.Tensor:
    """``n_samples`` token indices evenly spread on [0, N-1] (repeats allowed when N < n_samples)."""
    return torch.linspace(0, n_tokens - 1, n_samples, device=device).round().long()


class PrimalKSVDAttention(nn.Module):
    """Fixed-rank KSVD attention in the primal form (see module docstring), cost O(N * rank * dim)."""

    def __init__(self, dim: int, num_heads: int, rank: int, rank_multi: int, num_basis: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"SNodeViT: embed_dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim, self.rank, self.n_sampled = num_heads, dim // num_heads, rank, rank * rank_multi
        self.qkv = TimeMixedLinear(dim, 3 * dim, num_basis)
        self.proj = TimeMixedLinear(2 * dim, dim, num_basis)
        self.W_e = nn.Parameter(torch.empty(num_heads, self.n_sampled, rank))
        self.W_r = nn.Parameter(torch.empty(num_heads, self.n_sampled, rank))
        for w in (self.W_e, self.W_r):
            for h in range(num_heads):
                nn.init.orthogonal_(w.data[h])

    def scores(self, x, alpha):
        """(psi, phi, v, We|X, Wr|X): ``[B,H,N,r]``, ``[B,H,N,r]``, ``[B,H,N,d]``, ``[B,H,d,r]`` x2."""
        B, N, C = x.shape
        H, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x, alpha).view(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        xs = x[:, sample_token_indices(N, self.n_sampled, x.device)].view(B, self.n_sampled, H, d).transpose(1, 2)
        we = xs.transpose(-2, -1) @ self.W_e.to(x.dtype)  # [B,H,d,r]
        wr = xs.transpose(-2, -1) @ self.W_r.to(x.dtype)
        return q @ we, k @ wr, v, we, wr

    def forward(self, x, alpha, lam):
        B, N, C = x.shape
        psi, phi, v, we, wr = self.scores(x, alpha)
        lam = lam.to(x.dtype).unsqueeze(0).unsqueeze(2)  # [1,H,1,r]
        left = (psi * lam) @ (phi.transpose(-2, -1) @ v) / N    # A v     with A = psi diag(lam) phi^T
        right = (phi * lam) @ (psi.transpose(-2, -1) @ v) / N   # A^T v
        out = torch.cat([left, right], dim=-1).transpose(1, 2).reshape(B, N, 2 * C)
        loss = (0.5 * (psi * lam).pow(2).sum(-1).mean() + 0.5 * (phi * lam).pow(2).sum(-1).mean()
                - torch.einsum("bhdr,bhdr->bh", we, wr).mean()).pow(2)
        return self.proj(out, alpha), loss


class Drift(nn.Module):
    """f(X, t): time-conditioned KSVD attention + MLP (pre-LN), weights shared over all integration steps."""

    def __init__(self, dim, num_heads, rank, rank_multi, num_basis, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = PrimalKSVDAttention(dim, num_heads, rank, rank_multi, num_basis)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.fc1 = TimeMixedLinear(dim, hidden, num_basis)
        self.fc2 = TimeMixedLinear(hidden, dim, num_basis)

    def forward(self, x, cond):
        a, loss = self.attn(self.norm1(x), cond["alpha"], cond["lam"])
        y = x + a
        m = self.fc2(F.gelu(self.fc1(self.norm2(y), cond["alpha"])), cond["alpha"])
        return a + m, loss


class SNodeViT(Encoder):
    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 192,
                 depth: int = 8, num_heads: int = 4, rank: int = 16, rank_multi: int = 10,
                 num_weight_basis: int = 10, mlp_ratio: float = 3.75, time_dim: int = 64,
                 time_max_freq: float = 64.0, t_end: float = 1.0, solver: str = "euler", sigma_max: float = 0.1,
                 sigma_init: float = 0.01, num_classes: int = 0):
        super().__init__()
        if solver not in ("euler", "heun"):
            raise ValueError(f"SNodeViT solver={solver!r} must be 'euler' (Euler-Maruyama) or 'heun'")
        if not 0 < sigma_init < sigma_max:
            raise ValueError(f"SNodeViT needs 0 < sigma_init ({sigma_init}) < sigma_max ({sigma_max})")
        if depth < 1:
            raise ValueError(f"SNodeViT depth (integration steps) must be >= 1, got {depth}")
        self.embed_dim = self.num_features = embed_dim
        self.patch_size = patch_size
        self.num_register_tokens = 0
        self.num_classes = num_classes
        self.n_blocks = self.num_steps = depth
        self.solver, self.t_end, self.sigma_max = solver, t_end, sigma_max
        self.pos_grid = (img_size // patch_size, img_size // patch_size)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid[0] * self.pos_grid[1], embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.timenet = TimeNet(time_dim, embed_dim, num_weight_basis, num_heads, rank, embed_dim, time_max_freq)
        self.drift = Drift(embed_dim, num_heads, rank, rank_multi, num_weight_basis, mlp_ratio)
        p = sigma_init / sigma_max
        self.sigma_logit = nn.Parameter(torch.full((embed_dim,), math.log(p / (1 - p))))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else None
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.head is not None:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self.noise_generator: torch.Generator | None = None
        self._force_noise = False
        self._ksvd_terms: list = []
        self._accumulate = False

    # ------------------------------------------------------------------------------------------ SDE pieces
    def diffusion(self, t: float, cond=None) -> torch.Tensor:
        """Bounded per-channel diffusion G(t) in (0, sigma_max)."""
        cond = cond if cond is not None else self.timenet(t)
        return self.sigma_max * torch.sigmoid(self.sigma_logit + cond["sigma_offset"])

    def drift_at(self, x, t: float, cond=None):
        out, loss = self.drift(x, cond if cond is not None else self.timenet(t))
        self._ksvd_terms.append(loss)
        return out

    @property
    def noise_on(self) -> bool:
        return self.training or self._force_noise

    @contextlib.contextmanager
    def sampling(self, generator: torch.Generator | None = None):
        """Turn diffusion noise on (also in eval), optionally drawing it from ``generator``."""
        old = (self._force_noise, self.noise_generator)
        self._force_noise, self.noise_generator = True, generator
        try:
            yield self
        finally:
            self._force_noise, self.noise_generator = old

    def _noise(self, x, dt):
        eps = torch.randn(x.shape, generator=self.noise_generator, device=x.device, dtype=x.dtype)
        return eps * math.sqrt(dt)

    def integrate(self, x, noise: bool | None = None, solver: str | None = None, num_steps: int | None = None):
        """Yield the state after each of ``num_steps`` steps of the SDE from t=0 to ``t_end``."""
        noise = self.noise_on if noise is None else noise
        solver = solver or self.solver
        K = num_steps or self.num_steps
        dt = self.t_end / K
        for n in range(K):
            t0, t1 = n * dt, (n + 1) * dt
            c0 = self.timenet(t0)
            f0 = self.drift_at(x, t0, c0)
            dW = self._noise(x, dt) if noise else None
            g0 = self.diffusion(t0, c0).to(x.dtype) if noise else None
            if solver == "euler":
                x = x + f0 * dt + (g0 * dW if noise else 0)
            else:  # stochastic Heun: predictor (Euler-Maruyama), trapezoidal corrector with the same dW
                x_pred = x + f0 * dt + (g0 * dW if noise else 0)
                c1 = self.timenet(t1)
                f1 = self.drift_at(x_pred, t1, c1)
                x = x + 0.5 * (f0 + f1) * dt
                if noise:
                    x = x + 0.5 * (g0 + self.diffusion(t1, c1).to(x.dtype)) * dW
            yield x

    # ------------------------------------------------------------------------------------------ contract
    def prepare_tokens(self, x, mask):
        hw = self.token_grid(x)
        tokens = self.patch_embed(x)
        if mask is not None:
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype).unsqueeze(0), tokens)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        pos = torch.cat([cls_pos, interpolate_grid_embedding(patch_pos, self.pos_grid, hw)], dim=1)
        return tokens + pos.to(tokens.dtype)

    def forward_features(self, x, masks=None):
        if isinstance(x, (list, tuple)):
            self._ksvd_terms = []
            self._accumulate = True
            try:
                return super().forward_features(x, masks)
            finally:
                self._accumulate = False
        return super().forward_features(x, masks)

    def _features(self, x, mask):
        if not self._accumulate:
            self._ksvd_terms = []
        t = self.prepare_tokens(x, mask)
        for t in self.integrate(t):
            pass
        t_norm = self.norm(t)
        return {
            "x_norm_clstoken": t_norm[:, 0],
            "x_norm_regtokens": t_norm[:, 1:1],
            "x_norm_patchtokens": t_norm[:, 1:],
            "x_prenorm": t,
            "masks": mask,
        }

    def _intermediate(self, x, indices, norm):
        hw = self.token_grid(x)
        self._ksvd_terms = []
        wanted, outs = set(indices), {}
        t = self.prepare_tokens(x, None)
        for i, t in enumerate(self.integrate(t)):
            if i in wanted:
                o = self.norm(t) if norm else t
                outs[i] = (o[:, 1:], o[:, 0], hw)
            if i >= max(indices):
                break
        return [outs[i] for i in indices]

    def ksvd_loss(self) -> torch.Tensor:
        """KSVD regulariser (mean over drift evaluations) of the last ``forward_features`` call."""
        if not self._ksvd_terms:
            raise RuntimeError("ksvd_loss() needs a forward pass first (call model(x) / forward_features(x))")
        return torch.stack(self._ksvd_terms).mean()

    @torch.no_grad()
    def forward_with_uncertainty(self, x, num_samples: int = 16, seed: int = 0,
                                 generator: torch.Generator | None = None) -> dict:
        """Monte-Carlo predictive distribution from ``num_samples`` stochastic passes (noise on, seeded).

        Returns ``probs`` (predictive mean [B,C]), ``sample_probs`` [S,B,C], ``predictive_entropy`` (total
        uncertainty, nats), ``expected_entropy`` (aleatoric) and ``mutual_information`` (epistemic = total -
        aleatoric), each [B]."""
        if self.head is None:
            raise ValueError("forward_with_uncertainty needs a classifier: build the encoder with num_classes > 0")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(seed)
        with self.sampling(generator):
            probs = torch.stack([self.head(self.forward_features(x)["x_norm_clstoken"]).float().softmax(-1)
                                 for _ in range(num_samples)])
        mean = probs.mean(0)
        total = -(mean * mean.clamp_min(1e-12).log()).sum(-1)
        aleatoric = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean(0)
        return {"probs": mean, "sample_probs": probs, "predictive_entropy": total, "expected_entropy": aleatoric,
                "mutual_information": (total - aleatoric).clamp_min(0.0)}

    def layer_id(self, param_name: str) -> int:
        """Embeddings 0; the drift/TimeNet/diffusion, shared by all steps up to the last one, n_blocks; norm and
        head n_blocks+1."""
        if param_name.startswith(("pos_embed", "patch_embed", "mask_token", "cls_token")):
            return 0
        if param_name.startswith(("drift.", "timenet.", "sigma_logit")):
            return self.n_blocks
        return self.n_blocks + 1

    def no_weight_decay_names(self):
        return {"pos_embed", "cls_token", "mask_token", "sigma_logit"}


SNODEVIT_VARIANTS = {
    # README: dim / depth (integration steps) / heads / basis (KSVD rank) -> reported params
    "snodevit_tiny": (dict(embed_dim=96, depth=6, num_heads=3, rank=8), 1.2e6),
    "snodevit_small": (dict(embed_dim=192, depth=8, num_heads=4, rank=16), 4.8e6),
    "snodevit_base": (dict(embed_dim=384, depth=12, num_heads=6, rank=24), 19e6),
    "snodevit_large": (dict(embed_dim=768, depth=16, num_heads=12, rank=32), 76e6),
}

_SNODE_TEST = dict(embed_dim=32, depth=2, num_heads=2, rank=4, rank_multi=2, num_weight_basis=2, patch_size=8,
                   img_size=32, time_dim=16)


def _make_snodevit(cfg, **overrides):
    kwargs = dict(cfg)
    kwargs.update(overrides)
    return SNodeViT(**kwargs)


for _name, (_cfg, _params) in SNODEVIT_VARIANTS.items():
    register_encoder(_name, family="snodevit", test_overrides=_SNODE_TEST, test_img_size=32,
                     description=f"SNodeViT {_cfg['embed_dim']}/{_cfg['depth']} steps/{_cfg['num_heads']} heads/"
                                 f"rank {_cfg['rank']} (~{_params / 1e6:g}M README)")(partial(_make_snodevit, _cfg))
