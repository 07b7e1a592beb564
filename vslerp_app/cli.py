"""The `vslerp` command line: fixture, render, stats.

Each subcommand parses its arguments here and hands over to the package that does the
work. Errors a user can fix print one line and exit non-zero; --debug shows tracebacks.
"""

from __future__ import annotations

import argparse
import sys


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def _cmd_fixture(args) -> int:
    from pipelines.fixtures import write_fixture

    path = write_fixture(args.kind, args.dir, layout=args.layout, seed=args.seed)
    print(f"wrote tiny {args.kind} pipeline to {path}")
    return 0


def _cmd_stats(args) -> int:
    if args.reference is not None:
        return _stats_reference(args)
    if args.captions is not None:
        raise CLIError("--captions needs --reference (text stats use an open_clip text tower)")
    from pipelines import load_pipeline
    from pipelines.folder_stats import folder_stats

    pipe = load_pipeline(args.model, device=args.device, stats=None)
    result = folder_stats(pipe.encoder, args.images, batch_size=args.batch_size,
                          dataset=args.dataset, model_id=args.model)
    path = result.stats.save(args.out)
    s = result.stats
    print(f"wrote {path}: {s.dim}-d stats of {result.encoded} images "
          f"({len(result.skipped)} unreadable skipped), a={s.a:.4f} b={s.b:.4f} "
          f"pearson={s.pearson if s.pearson is None else round(s.pearson, 5)}")
    for name, reason in result.skipped[:10]:
        print(f"  skipped {name}: {reason}", file=sys.stderr)
    return 0


def _stats_reference(args) -> int:
    """`vslerp stats --reference SPEC`: image (and caption) stats of an open_clip space + report."""
    from pipelines.caption_stats import reference_stats
    from pipelines.reference import OpenClipEncoder, parse_reference

    model_name, pretrained = parse_reference(args.reference)
    encoder = OpenClipEncoder(model_name, pretrained, args.device, spec=args.reference)
    result = reference_stats(encoder, args.images, args.out, captions=args.captions,
                             batch_size=args.batch_size, dataset=args.dataset)
    for modality, s in result.report["modalities"].items():
        pearson = "n/a" if s["pearson"] is None else f"{s['pearson']:.5f}"
        ratio = "n/a" if s["mean_to_sigma"] is None else f"{s['mean_to_sigma']:.3f}"
        print(f"{modality}: n={s['n']} a={s['a']:.4f} b={s['b']:.4f} pearson={pearson} "
              f"|m|/|sigma|={ratio}")
    gap = result.report["modality_gap"]
    if gap:
        print(f"modality gap: |m_img - m_txt|={gap['mean_distance']:.4f} "
              f"cos(m_img, m_txt)={gap['mean_cosine']:.4f}")
    written = [result.paths["image"]] + ([result.paths["text"]] if result.text is not None else [])
    written += [result.paths["report_json"], result.paths["report_png"]]
    print(f"wrote {', '.join(map(str, written))} ({result.image.encoded} images, "
          f"{len(result.image.skipped)} unreadable skipped)")
    for name, reason in result.image.skipped[:10]:
        print(f"  skipped {name}: {reason}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vslerp", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fixture", help="write a tiny random-weight pipeline in the hub layout")
    p.add_argument("kind", choices=["karlo", "stable-unclip"])
    p.add_argument("dir")
    p.add_argument("--layout", choices=["hub", "current"], default="hub",
                   help="hub: model_index.json as the real repository (saved by an older "
                        "diffusers); current: as today's diffusers saves it")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_fixture)

    p = sub.add_parser("stats", help="image-modality stats of a model's encoder over a folder",
                       epilog="Custom open_clip architectures: set VSLERP_OPEN_CLIP_CONFIG to "
                              "NAME.json config file(s) (os.pathsep-separated), then use "
                              "--reference open_clip:NAME/PRETRAINED.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="preset name or local pipeline directory")
    which.add_argument("--reference", metavar="SPEC",
                       help="an open_clip reference space, open_clip:MODEL/PRETRAINED (e.g. "
                            "open_clip:ViT-B-32/openai); also writes <stem>.report.json/.png")
    p.add_argument("--captions", metavar="FILE",
                   help="with --reference: captions (one per line, or a COCO captions JSON) for "
                        "text-modality stats, written to <stem>.text.safetensors beside --out")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="stats file to write (.safetensors)")
    p.add_argument("--dataset", help="data set name for the provenance (default: folder name)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help="cuda, cpu, ... (default: CUDA if available)")
    p.set_defaults(func=_cmd_stats)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("vslerp: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for the user, the traceback with --debug
        if args.debug:
            raise
        print(f"vslerp {args.command}: error: {e}", file=sys.stderr)
        return 2
