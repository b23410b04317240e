"""DINOv2 student/teacher meta-architecture: the forward/backward of one SSL iteration.

``SSLMetaArch`` holds ``student`` and ``teacher`` (each a ModuleDict {backbone, dino_head, [ibot_head]}) and the
loss modules. Any registered encoder can be the backbone. Multi-crop runs one backbone call per resolution
group (globals, locals); iBOT masks apply to the global crops. Sharding (FSDP2) is applied by
:meth:`prepare_for_distributed_training` with the same structure for student and teacher, so the EMA runs on
local shards without communication.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from ..models import build_encoder, get_encoder_spec, load_pretrained
from .heads import DINOHead
from .losses import DINOLoss, KoLeoLoss, dino_crossview_loss, iBOTPatchLoss

VIT_LIKE = ("vit", "octic")


def backbone_kwargs(cfg: DictConfig, teacher: bool) -> dict:
    """Constructor keywords of the student/teacher backbone from ``cfg.student`` (+ ``student.extra``)."""
    s = cfg.student
    family = get_encoder_spec(s.arch).family
    kwargs = {}
    if family in VIT_LIKE:
        kwargs = dict(patch_size=s.patch_size, img_size=cfg.crops.global_crops_size,
                      drop_path_rate=0.0 if teacher else s.drop_path_rate, drop_path_uniform=s.drop_path_uniform,
                      init_values=s.layerscale, qkv_bias=s.qkv_bias, proj_bias=s.proj_bias, ffn_bias=s.ffn_bias,
                      num_register_tokens=s.num_register_tokens, attn_backend=s.attn_backend)
        if family == "vit":
            kwargs.update(ffn_layer=s.ffn_layer, interpolate_antialias=s.interpolate_antialias,
                          interpolate_offset=s.interpolate_offset)
    kwargs.update(dict(s.extra))
    if teacher and "drop_path_rate" in kwargs:
        kwargs["drop_path_rate"] = 0.0
    return kwargs


def build_backbone(cfg: DictConfig, teacher: bool = False) -> nn.Module:
    return build_encoder(cfg.student.arch, **backbone_kwargs(cfg, teacher))


class SSLMetaArch(nn.Module):
    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.do_dino = cfg.dino.loss_weight > 0
        self.do_koleo = cfg.dino.koleo_loss_weight > 0
        self.do_ibot = cfg.ibot.loss_weight > 0
        self.ibot_separate_head = cfg.ibot.separate_head
        self.student, self.teacher = nn.ModuleDict(), nn.ModuleDict()
        self.student["backbone"] = build_backbone(cfg, teacher=False)
        self.teacher["backbone"] = build_backbone(cfg, teacher=True)
        if cfg.student.pretrained_weights:
            load_pretrained(self.student["backbone"], cfg.student.pretrained_weights, strict=True, verbose=True)
        dim = self.student["backbone"].embed_dim
        for who in ("student", "teacher"):
            getattr(self, who)["dino_head"] = DINOHead(dim, cfg.dino.head_n_prototypes,
                                                       nlayers=cfg.dino.head_nlayers,
                                                       hidden_dim=cfg.dino.head_hidden_dim,
                                                       bottleneck_dim=cfg.dino.head_bottleneck_dim)
            if self.do_ibot and self.ibot_separate_head:
                getattr(self, who)["ibot_head"] = DINOHead(dim, cfg.ibot.head_n_prototypes,
                                                           nlayers=cfg.ibot.head_nlayers,
                                                           hidden_dim=cfg.ibot.head_hidden_dim,
                                                           bottleneck_dim=cfg.ibot.head_bottleneck_dim)
        self.dino_loss = DINOLoss(cfg.dino.head_n_prototypes)
        self.koleo_loss = KoLeoLoss()
        ibot_dim = cfg.ibot.head_n_prototypes if self.ibot_separate_head else cfg.dino.head_n_prototypes
        self.ibot_patch_loss = iBOTPatchLoss(ibot_dim)
        # the teacher starts as a copy of the student and never receives gradients
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never uses drop path / dropout
        return self

    # ------------------------------------------------------------------------------------------
    def compile_blocks(self):
        """``torch.compile`` every transformer block of both backbones in place (before sharding, as torchtitan)."""
        from ..fsdp import find_fsdp_units

        for who in (self.student, self.teacher):
            for unit in find_fsdp_units(who["backbone"]):
                if unit is not who["backbone"]:
                    unit.compile()

    def prepare_for_distributed_training(self, device_type: str):
        """Shard each student/teacher sub-module alike (FSDP2) when a process group exists."""
        from ..distributed import get_world_size
        from ..fsdp import shard_module

        if self.cfg.train.compile:
            self.compile_blocks()

        if get_world_size() == 1 or self.cfg.distributed.strategy == "none":
            return
        if self.cfg.distributed.strategy == "ddp":
            raise NotImplementedError("distributed.strategy=ddp is not implemented; use fsdp")
        for who in ("student", "teacher"):
            mods = getattr(self, who)
            for k in list(mods.keys()):
                mods[k] = shard_module(mods[k], self.cfg.compute_precision[who][k], device_type)

    # ------------------------------------------------------------------------------------------
    def _head_split(self, head: nn.Module, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run ``head`` once on the concatenation of ``parts`` and split the result back."""
        sizes = [p.shape[0] for p in parts]
        return list(head(torch.cat(parts)).split(sizes))

    @torch.no_grad()
    def teacher_targets(self, images, masks_flat_idx, n_masked, teacher_temp):
        """Teacher probabilities for the global crops' cls (crop-major order) and the masked patches."""
        out = self.teacher["backbone"](images, is_training=True)
        cls = out["x_norm_clstoken"]
        patches = out["x_norm_patchtokens"].flatten(0, 1)[masks_flat_idx] if self.do_ibot else None
        n_cls = cls.shape[0]
        if self.do_ibot and not self.ibot_separate_head:
            cls_logits, patch_logits = self._head_split(self.teacher["dino_head"], [cls, patches])
        else:
            cls_logits = self.teacher["dino_head"](cls)
            patch_logits = self.teacher["ibot_head"](patches) if self.do_ibot else None
        centering = self.cfg.train.centering
        if centering == "centering":
            cls_probs = self.dino_loss.softmax_center_teacher(cls_logits, teacher_temp)
            self.dino_loss.update_center(cls_logits)
            patch_probs = None
            if self.do_ibot:
                patch_probs = self.ibot_patch_loss.softmax_center_teacher(patch_logits, teacher_temp)
                self.ibot_patch_loss.update_center(patch_logits)
        else:
            cls_probs = self.dino_loss.sinkhorn_knopp_teacher(cls_logits, teacher_temp)
            patch_probs = (self.ibot_patch_loss.sinkhorn_knopp_teacher(patch_logits, teacher_temp, n_valid=n_masked)
                           if self.do_ibot else None)
        assert cls_probs.shape[0] == n_cls
        self._reshard(self.teacher)  # SHARD_GRAD_OP keeps the gathered teacher weights otherwise (no backward)
        return cls_probs, patch_probs

    @staticmethod
    def _reshard(module: nn.Module):
        from torch.distributed.fsdp import FSDPModule

        for m in module.modules():
            if isinstance(m, FSDPModule):
                m.reshard()

    def forward_backward(self, batch: dict, teacher_temp: float, loss_scaler=None) -> dict:
        """One SSL iteration's losses and backward; returns detached loss values for logging."""
        g = batch["collated_global_crops"]
        loc = batch.get("collated_local_crops")
        has_local = loc is not None and loc.numel() > 0
        masks = batch["collated_masks"]
        idx = batch["mask_indices_list"]
        n_masked = int(batch["n_masked_patches"].reshape(-1)[0]) if self.do_ibot else 0
        idx = idx[:n_masked]
        masks_weight = batch["masks_weight"][:n_masked]
        n_global = 2

        t_cls, t_patch = self.teacher_targets(g, idx, n_masked, teacher_temp)

        s_inputs = [g, loc] if has_local else [g]
        s_masks = [masks if self.do_ibot else None, None] if has_local else [masks if self.do_ibot else None]
        s_out = self.student["backbone"](s_inputs, masks=s_masks, is_training=True)
        s_g_cls = s_out[0]["x_norm_clstoken"]
        s_l_cls = s_out[1]["x_norm_clstoken"] if has_local else None
        parts = ([s_l_cls] if has_local else []) + [s_g_cls]
        s_patch = s_out[0]["x_norm_patchtokens"].flatten(0, 1)[idx] if self.do_ibot else None
        if self.do_ibot and not self.ibot_separate_head:
            outs = self._head_split(self.student["dino_head"], parts + [s_patch])
            s_patch_logits = outs.pop()
        else:
            outs = self._head_split(self.student["dino_head"], parts)
            s_patch_logits = self.student["ibot_head"](s_patch) if self.do_ibot else None
        s_l_logits = outs[0] if has_local else None
        s_g_logits = outs[-1]

        losses = {}
        total = s_g_cls.new_zeros((), dtype=torch.float32)
        if self.do_dino:
            g_term, l_term = dino_crossview_loss(s_g_logits, s_l_logits, t_cls, n_global)
            losses["dino_global_crops_loss"] = g_term * self.cfg.dino.loss_weight
            losses["dino_local_crops_loss"] = l_term * self.cfg.dino.loss_weight
            total = total + losses["dino_global_crops_loss"] + losses["dino_local_crops_loss"]
        if self.do_koleo:
            koleo = sum(self.koleo_loss(c) for c in s_g_cls.chunk(n_global))
            losses["koleo_loss"] = self.cfg.dino.koleo_loss_weight * koleo
            total = total + losses["koleo_loss"]
        if self.do_ibot:
            ibot = self.ibot_patch_loss.forward_masked(s_patch_logits, t_patch, masks, n_masked_patches=n_masked,
                                                       masks_weight=masks_weight)
            losses["ibot_loss"] = ibot * self.cfg.ibot.loss_weight
            total = total + losses["ibot_loss"]
        losses["total_loss"] = total
        if loss_scaler is not None:
            loss_scaler.scale(total).backward()
        else:
            total.backward()
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def update_teacher(self, momentum: float):
        from ..fsdp import ema_update_

        for k in self.student.keys():
            ema_update_(self.teacher[k], self.student[k], momentum)
