#!/usr/bin/env python3
"""tb_check.py: reads camotrain's TensorBoard event files with TensorBoard's own reader
(tensorboard.backend.event_processing.event_file_loader, which checks every record's CRCs
and parses the Event protos with protobuf), so the hand-written encoder of src/train/tensorboard.c
is checked against the real thing. Not needed by the tests or by users; run it by hand in a
virtual environment with tensorboard installed:

    python3 -m venv --system-site-packages /tmp/venv-tb && /tmp/venv-tb/bin/pip install tensorboard
    /tmp/venv-tb/bin/python tools/tb_check.py RUN [RUN ...]     # RUN: a run folder or a file

Prints each file's records by tag (count, first and last step and value), the text
summaries' first line, and checks: the first record is file_version "brain.Event:2";
the scalars TensorBoard's accumulator (what the Scalars tab shows) loads from the folder
agree with the raw records, less those a later file's session START (a resume) replaces,
and show each step once; every step record of metrics.jsonl has its train/loss at the
same step with the same value (to the 6 digits
metrics.jsonl keeps). Exit 0 when all hold, 1 otherwise."""
import glob
import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2


def read_file(path):
    """Every Event of one file, through TensorBoard's TFRecord reader (CRCs checked)."""
    events = []
    for raw in RawEventFileLoader(path).Load():
        ev = event_pb2.Event()
        ev.ParseFromString(raw)
        events.append(ev)
    return events


def summarize(path, events, problems):
    if not events or events[0].file_version != "brain.Event:2":
        problems.append(f"{path}: first record is not file_version brain.Event:2")
    by_tag, texts = {}, {}
    for ev in events:
        for v in ev.summary.value:
            if v.HasField("simple_value"):
                by_tag.setdefault(v.tag, []).append((ev.step, v.simple_value))
            elif v.metadata.plugin_data.plugin_name == "text":
                texts[v.tag] = v.tensor.string_val[0].decode()
    print(f"{path}: {len(events)} records")
    for tag, pts in sorted(by_tag.items()):
        print(f"  {tag:24s} {len(pts):4d} points, step {pts[0][0]}..{pts[-1][0]}, "
              f"value {pts[0][1]:.6g} .. {pts[-1][1]:.6g}")
    for tag, text in texts.items():
        print(f"  {tag:24s} text, {len(text)} chars: {text.strip().splitlines()[0]!r}")
    return by_tag


def apply_restart(path, events, by_tag, seen_start):
    """A session_log START after the folder's first is a restart (a resume): like
    TensorBoard's accumulator, drop the points read so far at steps >= its step."""
    for ev in events:
        if ev.HasField("session_log") and ev.session_log.status == event_pb2.SessionLog.START:
            dropped = 0
            if seen_start:
                for tag, pts in by_tag.items():
                    keep = [p for p in pts if p[0] < ev.step]
                    dropped += len(pts) - len(keep)
                    by_tag[tag] = keep
            print(f"{path}: session START at step {ev.step}"
                  + (f": a restart, {dropped} earlier points dropped" if seen_start else ""))
            seen_start = True
    return seen_start


def check_accumulator(folder, by_tag, problems):
    """What TensorBoard's Scalars tab loads from the folder equals the raw records."""
    acc = event_accumulator.EventAccumulator(folder, size_guidance={"scalars": 0})
    acc.Reload()
    for tag, pts in by_tag.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        if got != pts:
            problems.append(f"{folder}: accumulator's {tag} differs from the records")
        steps = [p[0] for p in got]
        if len(set(steps)) != len(steps):
            problems.append(f"{folder}: accumulator's {tag} has a step more than once")
    print(f"  accumulator: {len(acc.Tags()['scalars'])} scalar tags, "
          f"{len(acc.Tags().get('tensors', []))} tensor tags")


def check_jsonl(folder, by_tag, problems):
    """Each step record of metrics.jsonl has its loss in TensorBoard (float32 of it)."""
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.exists(path):
        return
    tb = dict(by_tag.get("train/loss", []))
    n = 0
    for line in open(path):
        r = json.loads(line)
        if r.get("type") != "step":
            continue
        want = r["loss"]  # written with 6 significant digits there
        if r["step"] not in tb or abs(tb[r["step"]] - want) > 1e-5 * max(1.0, abs(want)):
            problems.append(f"{folder}: step {r['step']}: loss {r['loss']} in metrics.jsonl, "
                            f"{tb.get(r['step'])} in TensorBoard")
        n += 1
    print(f"  metrics.jsonl: {n} step losses compared")


def main(args):
    if not args:
        print(__doc__)
        return 2
    problems = []
    for arg in args:
        files = sorted(glob.glob(os.path.join(arg, "events.out.tfevents.*"))) \
            if os.path.isdir(arg) else [arg]
        if not files:
            problems.append(f"{arg}: no events.out.tfevents.* file")
        by_tag, seen_start = {}, False
        for f in files:
            events = read_file(f)
            seen_start = apply_restart(f, events, by_tag, seen_start)
            for tag, pts in summarize(f, events, problems).items():
                by_tag.setdefault(tag, []).extend(pts)
        if os.path.isdir(arg) and files:
            check_accumulator(arg, by_tag, problems)
            check_jsonl(arg, by_tag, problems)
    for p in problems:
        print("FAIL", p)
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
