"""`mrad meta DATASET ROOT`: write the AnomalyCLIP/MRAD-compatible meta.json of a dataset on disk."""
from __future__ import annotations

import json

from ..datasets import DATASETS, read_dataset, write_meta

COMMAND = "meta"


def add_parser(sub, name):
    p = sub.add_parser(name, help="write a dataset's meta.json (AnomalyCLIP/MRAD format)",
                       description="Scan a dataset folder (layouts: see mrad_core/datasets.py) and write "
                                   "meta.json: {\"train\": {class: [sample]}, \"test\": {...}}, paths relative to "
                                   "ROOT. Datasets: " + ", ".join(DATASETS) + ".")
    p.add_argument("dataset", metavar="DATASET", help="one of: " + ", ".join(DATASETS))
    p.add_argument("root", metavar="ROOT", help="the dataset's folder")
    p.add_argument("--out", metavar="FILE", default=None, help="where to write (default: ROOT/meta.json)")
    p.set_defaults(run=run)


def run(args):
    path = write_meta(args.dataset, args.root, args.out)
    meta = json.loads(path.read_text())
    for split, classes in meta.items():
        n = sum(len(v) for v in classes.values())
        bad = sum(s["anomaly"] for v in classes.values() for s in v)
        print(f"{split}: {len(classes)} class(es), {n} image(s), {bad} anomalous")
    if args.out is None:  # the written file is what read_dataset uses from now on: check it reads back
        read_dataset(args.dataset, args.root, "test")
    print(f"wrote {path}")
    return 0
