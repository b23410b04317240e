#!/usr/bin/env python
"""Turn an octo training checkpoint into a plain backbone ``.safetensors`` file (no process group needed).

    python launchers/export.py --checkpoint out/dinov2_run --output teacher.safetensors
    python launchers/export.py --checkpoint out/dinov2_run/checkpoints/iter_00012500 --which student \
        --output student.safetensors --arch vit_small --arch-kwargs patch_size=14 img_size=518

``--checkpoint`` is an ``iter_*`` directory, a ``checkpoints`` directory or a training output directory (its
latest complete checkpoint). Keys are plain DINOv2 names (``blocks.0.attn.qkv.weight``), loadable strictly
with ``pretrain.models.load_pretrained``. With ``--arch`` (or ``--config-file`` of the run) the encoder is
built and the exported file is loaded strictly into it; the load report is printed.
"""
import argparse
import sys

from pretrain.checkpoint import load_model_state_from_checkpoint, resolve_checkpoint, save_safetensors


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="iter_* dir, checkpoints dir or training output dir")
    p.add_argument("--output", required=True, help="output .safetensors file")
    p.add_argument("--which", default="teacher", choices=("teacher", "student"), help="which backbone to export")
    p.add_argument("--arch", default=None, help="registered encoder name: build it and load the export strictly")
    p.add_argument("--arch-kwargs", nargs="*", default=[], metavar="KEY=VALUE",
                   help="encoder constructor keywords, e.g. patch_size=14 img_size=518")
    p.add_argument("--config-file", default=None, help="the run's config.yaml: build the encoder from student.*")
    p.add_argument("--check", action="store_true", help="verify by strict loading (needs --arch or --config-file)")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if not args.output.endswith(".safetensors"):
        sys.exit(f"export: --output must end with .safetensors, got {args.output!r}")
    if args.check and not (args.arch or args.config_file):
        sys.exit("export: --check needs --arch NAME [--arch-kwargs k=v ...] or --config-file <run>/config.yaml")
    path = resolve_checkpoint(args.checkpoint)
    sd = load_model_state_from_checkpoint(path, prefer=args.which)
    save_safetensors(sd, args.output, metadata={"format": "pt", "source": path, "which": args.which})
    print(f"exported {len(sd)} tensors of the {args.which} backbone from {path} to {args.output}")
    if args.arch or args.config_file:
        from eval.common import encoder_spec_from_config, parse_kwargs
        from pretrain.models import build_encoder, load_pretrained

        arch, kwargs = encoder_spec_from_config(args.config_file) if args.config_file else (None, {})
        arch = args.arch or arch
        kwargs.update(parse_kwargs(args.arch_kwargs))
        report = load_pretrained(build_encoder(arch, **kwargs), args.output, strict=True)
        print(report)
    return args.output


if __name__ == "__main__":
    main()
