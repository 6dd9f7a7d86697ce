"""`mrad eval`: per-class and mean image AUROC, image AP, pixel AUROC and AUPRO of MRAD-TF / FT / CLIP on a dataset
split; prints paper-style tables and writes OUT/metrics.json, metrics.csv, scores.csv, table.md (and overlays);
with --plots also ROC/PR, PRO, histogram and gallery figures under OUT/plots and OUT/analysis.json (analysis.py).
Shard across processes with `torchrun --nproc_per_node N -m mrad_core eval ...` (identical metrics)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from ..config import VARIANTS
from ..datasets import DATASETS, dataset_name, read_dataset
from ..distributed import setup, teardown
from ..errors import MRADError
from ..eval_analysis import EvalAnalysis
from ..evaluate import evaluate, format_table, group_by_class, write_report
from ..artefacts.resolve import resolve_paths
from ..settings import settings_of
from .common import add_model_args, detector_from_args

COMMAND = "eval"


def add_parser(sub, name):
    p = sub.add_parser(name, help="evaluate MRAD on a dataset (AUROC, AP, pixel AUROC, AUPRO)",
                       description="Encode every image of the split once, score it with each variant, and compute "
                                   "per-class and mean metrics as the reference does.")
    p.add_argument("--variant", choices=(*VARIANTS, "all"), default="all",
                   help="default: %(default)s (tf needs the banks; ft and clip also the heads)")
    p.add_argument("--dataset", required=True, help="one of: " + ", ".join(DATASETS))
    p.add_argument("--data-path", required=True, metavar="ROOT",
                   help="the dataset's folder (its meta.json is used if present)")
    p.add_argument("--split", default="test", help="meta.json split (default: %(default)s)")
    p.add_argument("--out", metavar="DIR", default=None, help="output folder (default: mrad-eval-DATASET)")
    p.add_argument("--dump-overlays", type=int, default=0, metavar="N",
                   help="write overlays of the first N images of each class and variant to OUT/overlays")
    p.add_argument("--plots", action="store_true",
                   help="also write OUT/plots/<class>/ and OUT/plots/all_classes/: ROC and PR curves, PRO curve, score "
                        "histograms with the F1-optimal and false-alarm thresholds, galleries of the hardest images; "
                        "and OUT/analysis.json (thresholds, why metrics are undefined, mistakes)")
    p.add_argument("--false-alarm-rate", type=float, default=0.05, metavar="F",
                   help="with --plots: also report the threshold that flags at most this fraction of the good images "
                        "(default: %(default)s)")
    p.add_argument("--gallery", type=int, default=3, metavar="K",
                   help="with --plots: the K highest-scoring good and K lowest-scoring defective images per class "
                        "and variant (default: %(default)s)")
    p.add_argument("--classes", default=None, metavar="A,B", help="only these classes (comma-separated)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N images of each class")
    p.add_argument("--workers", type=int, default=2, help="image-loading processes (default: %(default)s)")
    add_model_args(p)
    p.set_defaults(run=run)


def _select(records, classes, limit):
    groups = group_by_class(records)
    if classes:
        wanted = [c.strip() for c in classes.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in groups]
        if unknown:
            raise MRADError(f"unknown class(es) {', '.join(unknown)}; this split has {', '.join(groups)}")
        groups = {c: groups[c] for c in wanted}
    return [records[i] for idx in groups.values() for i in idx[:limit]]


def run(args):
    if args.batch_size < 1 or args.workers < 0 or args.dump_overlays < 0 or (args.limit is not None and args.limit < 1):
        raise MRADError("--batch-size and --limit must be >= 1, --workers and --dump-overlays >= 0")
    if not 0 <= args.false_alarm_rate <= 1 or args.gallery < 0:
        raise MRADError("--false-alarm-rate must be in [0, 1] and --gallery >= 0")
    name = dataset_name(args.dataset)
    records = _select(read_dataset(name, args.data_path, args.split), args.classes, args.limit)
    settings = settings_of(args)
    shard, args.device = setup(args.device, settings.dist_timeout_hours)
    ok = False
    try:
        detector = detector_from_args(args)
        variants = VARIANTS if args.variant == "all" else (args.variant,)
        for v in variants:
            detector.require(v)
        out = Path(args.out or f"mrad-eval-{name}")
        analysis = EvalAnalysis(out, variants, false_alarm_rate=args.false_alarm_rate, gallery=args.gallery) \
            if args.plots and shard.main else None
        report = evaluate(detector, records, variants, batch_size=args.batch_size, workers=args.workers, shard=shard,
                          overlay_dir=out / "overlays", overlays=args.dump_overlays, on_class=analysis)
        if shard.main:
            delivery = getattr(detector, "delivery", None)  # where load_detector found each file
            paths = delivery.paths if delivery else resolve_paths(args.backbone, args.heads, args.image_bank,
                                                                  args.patch_bank, files=settings.files)
            info = {"dataset": name, "split": args.split, "data_path": str(Path(args.data_path).resolve()),
                    "variants": list(variants), "n_images": len(records), "model": args.model,
                    "files": {k: (Path(v).name if v else None) for k, v in paths.items()},
                    "bank_source": detector.image_bank.source,
                    "processes": shard.world, "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat()}
            written = write_report(report, out, info)
            for v in variants:
                print(format_table(report["metrics"][v], f"MRAD-{v.upper()} on {name} ({len(records)} images)"))
                print()
            if analysis is not None:
                analysis.finish(report)
                written.append(out / "analysis.json")
                print(f"wrote {len(analysis.plots)} figures under {out / 'plots'}")
            print(f"wrote {', '.join(str(p) for p in written)}")
        ok = True
    finally:
        teardown(shard, ok)
    return 0
