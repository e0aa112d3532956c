#!/usr/bin/env python3
"""Reads a Flint TensorBoard event file back with TensorBoard's own reader and compares it
with what was logged.

    check-tensorboard.py EVENTS EXPECTED.json

EVENTS is an event file, or a run folder (TensorBoard then reads every event file in it,
in name order, as it does for a run). EXPECTED.json maps each scalar tag to its
[step, value] pairs in order, e.g. {"train/loss": [[0, 2.3], [1, 1.1]]}; the values are
compared after rounding to float32, which is how TensorBoard stores scalars (NaN and
Infinity are written as Python's json writes them).

Checks, each with TensorBoard's code:
- every record's framing and masked CRC-32C (its TFRecord reader; a bad CRC fails here
  instead of being skipped quietly as the event loader does), and that every record parses
  as an `Event` protobuf;
- that the first event of each file carries file_version "brain.Event:2";
- with `EventAccumulator(...).Reload()`: the scalar tags are exactly the expected ones,
  and `Scalars(tag)` has exactly the expected steps and values, with plausible wall times.

Exit status 0 when all hold; 1 with a list of the differences otherwise; 2 on bad usage.
Needs the `tensorboard` package (.ci/run installs one into a venv, FLINT_TB_PYTHON).
"""

import ctypes
import json
import math
import os
import sys


def f32(x):
    """x rounded to float32 as a C cast does (values past its range become infinite)."""
    return ctypes.c_float(x).value


def same_f32(got, want):
    w = f32(want)
    if math.isnan(w):
        return math.isnan(got)
    return got == w


def event_files(path):
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if "tfevents" in n)
        return [os.path.join(path, n) for n in names]
    return [path]


def check_records(files, problems):
    """Every record of every file through TensorBoard's TFRecord reader (CRCs checked)."""
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.compat.proto import event_pb2

    total = 0
    for f in files:
        count = 0
        try:
            for raw in event_file_loader._make_tf_record_iterator(f):
                event = event_pb2.Event.FromString(raw)
                if count == 0 and event.file_version != "brain.Event:2":
                    problems.append(
                        f"{f}: first event has file_version {event.file_version!r}, "
                        "expected 'brain.Event:2'"
                    )
                count += 1
        except Exception as e:  # DataLossError (CRC, truncation), DecodeError
            problems.append(f"{f}: record {count}: {type(e).__name__}: {e}")
        print(f"{f}: {count} records, CRCs and protobufs valid")
        total += count
    return total


def main(argv):
    if len(argv) != 3:
        print("usage: check-tensorboard.py EVENTS EXPECTED.json", file=sys.stderr)
        return 2
    path, expected_path = argv[1], argv[2]
    with open(expected_path) as fh:
        expected = json.load(fh)

    import tensorboard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    problems = []
    files = event_files(path)
    if not files:
        print(f"no event files in {path}", file=sys.stderr)
        return 1
    check_records(files, problems)

    acc = EventAccumulator(path, size_guidance={"scalars": 0})
    acc.Reload()
    if acc.file_version != 2.0:
        problems.append(f"file_version {acc.file_version!r}, expected 2.0")
    tags = sorted(acc.Tags()["scalars"])
    if tags != sorted(expected):
        problems.append(f"scalar tags {tags}, expected {sorted(expected)}")
    for tag in sorted(expected):
        if tag not in tags:
            continue
        got = acc.Scalars(tag)
        want = expected[tag]
        steps = [e.step for e in got]
        want_steps = [int(s) for s, _ in want]
        if steps != want_steps:
            problems.append(f"{tag}: steps {steps}, expected {want_steps}")
            continue
        bad = [
            (e.step, e.value, f32(v))
            for e, (_, v) in zip(got, want)
            if not same_f32(e.value, float(v))
        ]
        for step, g, w in bad[:5]:
            problems.append(f"{tag} step {step}: value {g!r}, expected {w!r} (float32)")
        walls = [e.wall_time for e in got]
        if any(w < 1.0e9 for w in walls) or walls != sorted(walls):
            problems.append(f"{tag}: wall times not plausible/ordered: {walls[:5]}")
        if not bad:
            shown = ", ".join(f"{e.step}:{e.value:.6g}" for e in got[:4])
            more = " ..." if len(got) > 4 else ""
            print(f"  {tag}: {len(got)} scalars match ({shown}{more})")

    print(f"tensorboard {tensorboard.__version__} EventAccumulator read {path}")
    if problems:
        print("MISMATCH:")
        for p in problems:
            print("  " + p)
        return 1
    print("OK: tags, steps and values match")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
