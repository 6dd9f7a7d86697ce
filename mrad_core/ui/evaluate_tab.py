"""The Evaluate tab: labelled images of your product -> metrics, curves and the worst mistakes per variant, the
thresholds the labels suggest (applicable to the Detect tab's slider), the report as a ZIP; and the /evaluate API.

The model part of every batch goes through the page's chunk call (`page.gpu_chunk`: plain data in and out, one
encoding per image for all variants); reading the labels, the metrics and the plots run here (mrad_core.eval_report).
"""
from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from .. import records
from ..config import VARIANTS
from ..errors import MRADError
from ..eval_report import evaluate_samples, report_json
from ..labelled import MAX_IMAGES, read_labelled_list
from .gpu import user_errors

INTRO = ("**How well does each variant separate good from bad on *your* parts?** Upload a ZIP with `good/` and "
         "`bad/` folders (optionally `masks/`, named after the bad images) or in the MVTec layout "
         "(`<class>/test/<good|defect>/`, masks in `<class>/ground_truth/<defect>/`), or upload good and defective "
         "images separately. Uses the memory bank and variants chosen above; each image is encoded once. Pixel "
         "metrics need masks; a metric that cannot be computed shows as – with the reason.")
NOTHING = "nothing to evaluate: upload a labelled ZIP, or good and defective images"
BOTH = "upload either a labelled ZIP or separate good/defective images, not both: remove one of them"
NO_THRESHOLD = "no threshold to apply for {variant}: evaluate first (a threshold needs good and defective images)"
KINDS = {"f1": "F1-optimal", "fpr": "at the false-alarm rate"}
SHOWN_ERRORS = 20


def _path(f) -> str:
    """An uploaded file as Gradio or gradio_client passes it (path string, FileData dict or object) -> path."""
    return str(f.get("path") if isinstance(f, dict) else getattr(f, "path", f))


def samples_of(zip_file, good=None, bad=None, masks=None, max_images: int = MAX_IMAGES):
    """The upload fields -> a ZIP path or a LabelledSet of the separate images (masks paired by file stem, with or
    without `_mask`; a mask without a defective image of that name becomes a per-entry error)."""
    good, bad, masks = ([_path(f) for f in x or []] for x in (good, bad, masks))
    if zip_file and (good or bad):
        raise MRADError(BOTH)
    if zip_file:
        return _path(zip_file)
    if not good and not bad:
        raise MRADError(NOTHING + (" (masks alone are not enough)" if masks else ""))
    by_stem, errors = {}, []
    for m in masks:
        stem = Path(m).stem.removesuffix("_mask")
        if stem in by_stem:
            errors.append((Path(m).name, f"skipped: a second mask for {stem}"))
        else:
            by_stem[stem] = m
    used = {Path(p).stem for p in bad}
    errors += [(Path(m).name, f"skipped: a mask without an image (no defective image named {s})")
               for s, m in by_stem.items() if s not in used]
    if by_stem:  # as for a ZIP: say which defective images count as all-normal pixels
        errors += [(Path(b).name, "note: no mask, so all its pixels count as normal in the pixel metrics")
                   for b in bad if Path(b).stem not in by_stem]
    labelled = read_labelled_list([(p, "good") for p in good] + [(p, "bad", by_stem.get(Path(p).stem)) for p in bad],
                                  max_images=max_images)
    labelled.errors[:0] = errors
    return labelled


# Gradio's gallery scrolls inside a fixed 450 px window even with height="auto": tall figures (the worst mistakes, a
# row per image) then show only their top. The figure galleries grow to their content instead.
FIGURES_CSS = ("#eval-plots .grid-wrap, #eval-mistakes .grid-wrap {height: auto !important; max-height: none "
               "!important; overflow: visible !important}\n")


class EvaluateTab:
    def __init__(self, page):
        self.page = page

    def build(self):
        gr.Markdown(INTRO)
        with gr.Row():
            self.zip = gr.File(label="Labelled ZIP", file_types=[".zip"], elem_id="eval-zip")
            self.good = gr.File(file_count="multiple", label="…or good images", file_types=["image"],
                                elem_id="eval-good")
            self.bad = gr.File(file_count="multiple", label="…and defective images", file_types=["image"],
                               elem_id="eval-bad")
            self.masks = gr.File(file_count="multiple", label="Masks of the defective images (optional: same file "
                                 "name, or name_mask.png)", file_types=["image"])
        with gr.Row():
            self.rate = gr.Slider(0, 0.5, 0.05, step=0.01, label="False-alarm rate of the second threshold")
            self.gallery_k = gr.Slider(0, 8, 3, step=1, label="Worst mistakes shown per kind, class and variant")
        self.run = gr.Button("Evaluate", variant="primary", elem_id="run-eval")
        self.report = gr.Markdown(elem_id="eval-report")
        self.table = gr.Dataframe(label="Metrics in % (– = undefined: see the note)", wrap=True, elem_id="eval-table")
        self.thresholds = gr.Dataframe(label="Thresholds from your labels (all images pooled; flag score ≥ "
                                       "threshold)", wrap=True, elem_id="eval-thresholds")
        with gr.Row():
            self.kind = gr.Radio([(label, k) for k, label in KINDS.items()], value="f1", label="Threshold to apply")
            self.variant = gr.Dropdown([(records.name(v), v) for v in VARIANTS], value=VARIANTS[0], label="of variant")
            self.apply = gr.Button("Apply to the Detect tab's image threshold", elem_id="eval-apply")
        self.plots = gr.Gallery(label="ROC / PR and PRO curves, score histograms (per class, then all images)",
                                columns=2, height="auto", object_fit="contain", elem_id="eval-plots")
        self.mistakes = gr.Gallery(label="Worst mistakes: image | overlay | ground truth", columns=1, height="auto",
                                   object_fit="contain", elem_id="eval-mistakes")
        self.download = gr.File(label="Report ZIP: metrics.json/csv, scores.csv, analysis.json, plots, overlays")
        self.found = gr.State({})  # {"f1": {variant: threshold | None}, "fpr": {...}} of the last evaluation

    def wire(self):
        p, d = self.page, self.page.detect
        self.run.click(self.evaluate, [self.zip, self.good, self.bad, self.masks, p.variants, p.source, p.bank_id,
                                       self.rate, self.gallery_k],
                       [self.report, self.table, self.thresholds, self.plots, self.mistakes, self.download,
                        self.found, self.variant], api_name="evaluate_tab", api_visibility="private",
                       show_progress_on=[self.report],
                       **p.model_events)
        # the Detect tab re-draws on user input only: re-draw its views with the new threshold too
        self.apply.click(self.apply_threshold, [self.found, self.kind, self.variant], d.controls["image_threshold"],
                         api_visibility="private", queue=False
                         ).then(d.render, [p.analysis, *d.control_inputs], d.outputs, api_visibility="private",
                                show_progress="hidden")
        gr.api(self.evaluate_api, api_name="evaluate", **p.model_events)

    # ------------------------------------------------------------------ the evaluation (model part: gpu_chunk)
    def run_evaluation(self, samples, variants, source, bank_id, rate=0.05, gallery=3, progress=None):
        """-> (EvalReport, {variant: why it did not run})."""
        p = self.page
        source = p.source_of(source)
        chosen = [v for v in VARIANTS if v in (variants or [])]
        if not chosen:
            raise MRADError("choose at least one variant (above)")
        scorer = p.service.scorer(source, bank_id, call=p.gpu_chunk, per_image=not p.settings.zero_gpu)
        run, skipped = scorer.plan(chosen)  # exact: loads the source's detector
        p.service.tidy()
        settings = p.settings
        return evaluate_samples(scorer, samples, run, progress=progress, workdir=p.service.workdir,
                                false_alarm_rate=float(rate), gallery=int(gallery),
                                batch_size=settings.batch_size, max_images=settings.max_batch), skipped

    @user_errors
    def evaluate(self, zip_file, good, bad, masks, variants, source, bank_id, rate=0.05, gallery=3,
                 progress=gr.Progress()):
        samples = samples_of(zip_file, good, bad, masks, self.page.settings.max_batch)
        r, skipped = self.run_evaluation(samples, variants, source, bank_id, rate, gallery,
                                         lambda f, words: progress(f, desc=words))
        headers, rows = r.table()
        th_headers, th_rows = r.threshold_table()
        figures = [(str(f), f.relative_to(r.out_dir / "plots").as_posix()) for f in r.plots]
        found = {kind: r.threshold(kind) for kind in KINDS}
        return (report_md(r, skipped), {"headers": headers, "data": rows}, {"headers": th_headers, "data": th_rows},
                [f for f in figures if not Path(f[0]).name.startswith("gallery")],
                [f for f in figures if Path(f[0]).name.startswith("gallery")], str(r.zip), found,
                gr.Dropdown(choices=[(records.name(v), v) for v in r.variants], value=r.variants[0]))

    def apply_threshold(self, found, kind, variant):
        """Set the Detect tab's image threshold to a threshold of the last evaluation (clipped to the slider)."""
        value = ((found or {}).get(kind) or {}).get(variant)
        if value is None:
            gr.Warning(NO_THRESHOLD.format(variant=records.name(variant)))
            return gr.update()  # the slider stays as it is
        value = round(min(max(float(value), 0.0), 1.0), 4)
        gr.Info(f"Detect tab: image threshold set to {value:.4f} ({records.name(variant)}, {KINDS[kind]})")
        return gr.Slider(value=value)

    @user_errors
    def evaluate_api(self, labelled_zip: gr.FileData | None = None, variants: list[str] = list(VARIANTS),
                     source: str | None = None, false_alarm_rate: float = 0.05, bank_id: str | None = None,
                     good: list[gr.FileData] | None = None, bad: list[gr.FileData] | None = None,
                     masks: list[gr.FileData] | None = None) -> dict:
        """Evaluate labelled images with the chosen variants (all by default): a ZIP (good/ + bad/ [+ masks/], or
        the MVTec layout), or lists of good and bad images [+ masks named after them] -> JSON: "metrics" per
        variant, per class and their "mean" (fractions; null where undefined, the reason in "undefined"),
        "thresholds" (F1-optimal and at the false-alarm rate, per class and "all_classes"), "images" (each
        image's label and scores), "mistakes", "errors" (entries skipped or noted), "skipped_variants", "table"
        (as the tab shows it)."""
        samples = samples_of(labelled_zip, good, bad, masks, self.page.settings.max_batch)
        r, skipped = self.run_evaluation(samples, variants, source, bank_id, false_alarm_rate, gallery=0)
        headers, rows = r.table()
        return {**json.loads(report_json(r)), "images": r.images, "skipped_variants": skipped,
                "table": {"headers": headers, "data": rows}}


def report_md(r, skipped: dict) -> str:
    """The lines above the table: what was evaluated, what did not run, entries skipped or noted."""
    i = r.info
    text = (f"**{len(r.images)} images evaluated** ({i['n_good']} good, {i['n_defective']} defective, "
            f"{i['n_masks']} with masks) with {', '.join(records.name(v) for v in r.variants)}.")
    text += "".join(f" {records.name(v)} did not run: {why}." for v, why in skipped.items())
    if not r.has_masks:
        text += " No masks were given, so there are no pixel metrics."
    if r.errors:
        more = len(r.errors) - SHOWN_ERRORS
        text += f"\n\n**{len(r.errors)} entries skipped or noted:** " + "; ".join(
            f"`{n}`: {m}" for n, m in r.errors[:SHOWN_ERRORS]) + (f"; … and {more} more" if more > 0 else "")
    return text
