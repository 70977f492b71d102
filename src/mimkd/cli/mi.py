"""`mimkd mi estimate|layers`: mutual information in nats (the tool is `mimkd.estimate`)."""

from __future__ import annotations


def add_parsers(sub, argv: list[str]) -> None:
    mi = sub.add_parser(
        "mi", help="estimate mutual information (nats) between paired samples or networks"
    )
    mi_sub = mi.add_subparsers(dest="mi_command", required=True, metavar="WHAT")
    est = mi_sub.add_parser("estimate", help="MI between two paired arrays (.npz, .npy pair, .pt)")
    est.add_argument("data", help="DATA.npz, X.npy,Y.npy or DATA.pt")
    est.add_argument("--x", default=None, help="key of the first array [x]")
    est.add_argument("--y", default=None, help="key of the second array [y]")
    est.add_argument(
        "--estimator", default="infonce", help="infonce | nwj | dv | smile | jsd-dv [infonce]"
    )
    est.add_argument("--steps", type=int, default=2000, help="critic training steps [2000]")
    est.add_argument("--batch-size", type=int, default=256, help="critic batch size [256]")
    est.add_argument("--hidden", type=int, default=256, help="critic width [256]")
    est.add_argument("--seed", type=int, default=0)
    est.add_argument(
        "--out", default="runs/mi", help="folder for mi.json and the curve PNG [runs/mi]"
    )
    est.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    lay = mi_sub.add_parser(
        "layers", help="MI between teacher and student representations, layer by layer"
    )
    lay.add_argument("--teacher", required=True, help="teacher checkpoint")
    lay.add_argument("--student", required=True, help="student checkpoint")
    lay.add_argument("--data", default=None, help="dataset name (default: the student's)")
    lay.add_argument("--estimator", default="infonce")
    lay.add_argument("--samples", type=int, default=4000, help="images to embed [4000]")
    lay.add_argument("--steps", type=int, default=1000, help="critic steps per layer [1000]")
    lay.add_argument("--out", default="runs/mi_layers")
    lay.add_argument("--json", action="store_true")
    mi.set_defaults(handler=_mi)


def _mi(args) -> int:
    from mimkd.estimate import command

    return command.main(args)
