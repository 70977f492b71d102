"""A rank that raises: every rank exits non-zero promptly (no rank left waiting in a collective),
and the error is printed once, by the rank that raised; the others add a short note."""

from __future__ import annotations

import re

from ddp_worker import launch_cli

# built at run time: a traceback shows the source line that raised, and must not count twice
MESSAGE = "-".join(["injected", "failure", "on", "rank", "1"])


def test_a_rank_that_raises_stops_every_rank_promptly_with_the_error_shown_once(
    idx_folder, tmp_path
):
    argv = [
        "train", "model=cnn_tiny", f"data.root={idx_folder}", "data.download=false",
        "data.batch_size=16", "epochs=1", "device=cpu", "progress=false", "dist_timeout=30",
        f"run_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    launch = launch_cli(argv, {"kind": "raise", "rank": 1, "at": 2, "message": MESSAGE})
    print(f"\n2 processes, rank 1 raising at step 2: {launch.seconds:.1f} s to every exit")
    assert launch.seconds < 60  # the bound, torchrun's start included
    codes = re.findall(r"^\s*rank\s+:\s*(\d).*\n\s*exitcode\s+:\s*(-?\d+)", launch.output, re.M)
    exits = {int(rank): int(code) for rank, code in codes}
    assert set(exits) == {0, 1} and all(code != 0 for code in exits.values()), launch.output
    assert launch.output.count(MESSAGE) == 1, launch.output
    # rank 0's collective failed because rank 1 left: one short note, no traceback of its own
    notes = [line for line in launch.error_lines if "stops: a collective failed" in line]
    assert len(notes) == 1 and "process 0 of 2" in notes[0], launch.output
    # one worker traceback (rank 1's, ending in the error); torchrun adds its own summary
    assert [line for line in launch.output.splitlines() if "]: Traceback" in line] == [
        "[rank1]: Traceback (most recent call last):"
    ]
