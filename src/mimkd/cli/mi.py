"""`mimkd mi estimate|layers`: mutual information in nats (the tool is `mimkd.estimate`)."""

from __future__ import annotations

import argparse


def _estimator_epilog() -> str:
    from mimkd.estimate.core import MIN_PAIRS, estimator_descriptions

    lines = ["estimators (--estimator):"]
    lines += [f"  {name:<9} {text}" for name, text in estimator_descriptions().items()]
    lines += [
        "",
        "preprocess (--preprocess): copula (default: each column to normal scores by rank; MI is",
        "  unchanged by invertible maps of each variable, and heavy tails and monotone distortions",
        "  are removed), robust (median/MAD, clipped), standardize (mean/std), none.",
        "",
        f"At least {MIN_PAIRS} pairs are needed. The interval covers sampling noise of the rows",
        "for ksg, and only the held-out evaluation noise of the trained critic for the neural",
        "estimators; the output says which, and warns when the estimate is below 0 or near the",
        "estimator's ceiling.",
    ]
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def add_parsers(sub, argv: list[str]) -> None:
    mi = sub.add_parser(
        "mi", help="estimate mutual information (nats) between paired samples or networks"
    )
    mi_sub = mi.add_subparsers(dest="mi_command", required=True, metavar="WHAT")
    est = mi_sub.add_parser(
        "estimate",
        help="MI between two paired arrays (.npz, .npy pair, .pt)",
        epilog=_estimator_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    est.add_argument(
        "data", help="DATA.npz, X.npy,Y.npy, a folder with x.npy and y.npy, or DATA.pt"
    )
    est.add_argument("--x", default=None, help="name of the first array in DATA [x]")
    est.add_argument("--y", default=None, help="name of the second array in DATA [y]")
    est.add_argument("--estimator", default="auto", help="see the list below [auto]")
    est.add_argument("--preprocess", default="copula", help="copula | robust | standardize | none")
    est.add_argument(
        "--critic", default="auto", help="neural estimators: auto | separable | concat [auto]"
    )
    est.add_argument(
        "--hidden", type=_positive_int, default=None, help="critic width [sized to the data]"
    )
    est.add_argument("--steps", type=_positive_int, default=None, help="max critic steps [auto]")
    est.add_argument("--batch-size", type=_positive_int, default=None, help="critic batch [256]")
    est.add_argument(
        "--ensemble", type=_positive_int, default=None, help="critics averaged per fold [1]"
    )
    est.add_argument("--k", type=_positive_int, default=3, help="KSG neighbours [3]")
    est.add_argument("--seed", type=int, default=0)
    est.add_argument("--out", default="runs/mi", help="folder for mi.json and the curve [runs/mi]")
    est.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    lay = mi_sub.add_parser(
        "layers", help="MI between teacher and student representations, layer by layer"
    )
    lay.add_argument("--teacher", required=True, help="teacher checkpoint")
    lay.add_argument("--student", required=True, help="student checkpoint")
    lay.add_argument("--data", default=None, help="dataset name (default: the student's)")
    lay.add_argument("--estimator", default="auto", help="as for `mimkd mi estimate` [auto]")
    lay.add_argument("--samples", type=_positive_int, default=4000, help="images to embed [4000]")
    lay.add_argument("--steps", type=_positive_int, default=None, help="critic steps per layer")
    lay.add_argument("--out", default="runs/mi_layers")
    lay.add_argument("--json", action="store_true")
    mi.set_defaults(handler=_mi)


def _mi(args) -> int:
    from mimkd.estimate import command

    return command.main(args)
