"""The Batch tab: many images, ZIPs or a folder, scored chunk by chunk (each chunk one model call), with its own
thresholds; a gallery, a table, the CSV and a ZIP of overlays and maps."""
from __future__ import annotations

import gradio as gr

from .. import batch, records, viz
from ..config import VARIANTS
from ..errors import MRADError
from .gpu import user_errors


class BatchTab:
    def __init__(self, page):
        self.page = page

    def build(self):
        gr.Markdown("Many images at once: files, ZIP archives or a folder. Each image is encoded once; bad files are "
                    "listed, the rest scored. Uses the memory bank and variants chosen above.")
        with gr.Row():
            self.files = gr.File(file_count="multiple", label="Images or ZIP archives", elem_id="batch-files")
            self.folder = gr.File(file_count="directory", label="…or a folder")
        with gr.Row():
            self.batch_threshold = gr.Slider(0, 1, 0.5, step=0.01, label="Image threshold (verdicts in the CSV)")
            self.batch_pixel = gr.Slider(0, 1, 0.5, step=0.01, label="Pixel threshold (area %, overlays)")
            self.batch_norm = gr.Radio([("raw", "raw"), ("min–max", "minmax"), ("calibrated", "calibrated")],
                                       value="raw", label="Map normalisation of the overlays")
        self.run_batch = gr.Button("Score all", variant="primary", elem_id="run-batch")
        self.batch_report = gr.Markdown()
        self.gallery = gr.Gallery(label="Sorted by mean score (highest first); ✗ anomalous, ✓ normal", columns=2,
                                  height="auto", object_fit="contain", elem_id="batch-gallery")
        self.table = gr.Dataframe(label="Results", wrap=False, elem_id="batch-table")  # headers on one line
        with gr.Row():
            self.batch_csv = gr.File(label="CSV")
            self.batch_zip = gr.File(label="ZIP: overlays (PNG), raw maps (.npy, 518×518 float32), CSV")

    def wire(self):
        p = self.page
        self.run_batch.click(self.predict_batch, [self.files, self.folder, p.variants, p.source, self.batch_threshold,
                                                  self.batch_pixel, self.batch_norm, p.bank_id],
                             [self.gallery, self.table, self.batch_csv, self.batch_zip, self.batch_report],
                             api_name="predict_batch", show_progress_on=[self.batch_report, self.gallery],
                             **p.model_events)

    @user_errors
    def predict_batch(self, files, folder=None, variants=VARIANTS, source=None, image_threshold=0.5,
                      pixel_threshold=0.5, normalisation="raw", bank_id=None, progress=gr.Progress()):
        paths = [str(f) for f in (files or [])] + [str(f) for f in (folder or [])]
        if not paths:
            raise MRADError("no files: upload images, a ZIP of images or a folder")
        view = viz.View(float(pixel_threshold), normalisation=normalisation)
        self.page.service.tidy()
        r = batch.run_batch(self.page.service, paths, variants, self.page.source_of(source), bank_id, view,
                            float(image_threshold), lambda p, d: progress(p, desc=d), score=self.page.gpu_chunk,
                            per_image=not self.page.settings.zero_gpu)
        table = [[row.get(c, "") for c in r.columns] for row in r.rows]
        n_ok = len(r.rows) - len(r.errors)
        report = f"**{n_ok} image(s) scored** with {', '.join(records.name(v) for v in r.variants)}, sorted by mean " \
                 "score."
        if r.errors:
            report += f" **{len(r.errors)} skipped:** " + "; ".join(f"`{n}`: {m}" for n, m in r.errors[:20])
        return r.gallery, {"headers": r.columns, "data": table}, str(r.csv), str(r.zip), report
