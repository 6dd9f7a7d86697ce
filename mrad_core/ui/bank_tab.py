"""The Bank tab: build a bank from your own normal (and defect) images; it is kept as two files."""
from __future__ import annotations

import gradio as gr

from ..errors import MRADError
from .gpu import user_errors


class BankTab:
    def __init__(self, page):
        self.page = page

    def build(self):
        gr.Markdown("Build a memory bank from **your** defect-free images (plus, optionally, defect images with masks "
                    "named `x_mask.png`). MRAD-TF needs only it and the CLIP backbone. Without defect images the "
                    "synthetic defects of `assets/bank` are used as the anomalous memories. The bank is kept for a "
                    "few hours; download its two files to keep it.")
        with gr.Row():
            self.normal_files = gr.File(file_count="multiple", label="Normal images")
            self.defect_files = gr.File(file_count="multiple", label="Defect images + masks (optional)")
        self.bank_name = gr.Textbox("my bank", label="Name")
        self.build_button = gr.Button("Build bank", variant="primary", elem_id="build-bank")
        self.bank_report = gr.Markdown()
        self.bank_files = gr.File(label="Bank files (safetensors: --image-bank / --patch-bank)")
        self.bank_id_box = gr.Textbox(label="Bank id (API: /predict with source='custom' and this bank_id)",
                                      interactive=False)

    def wire(self):
        p = self.page
        self.build_button.click(self.build_bank_files, [self.normal_files, self.defect_files, self.bank_name],
                                [self.bank_report, self.bank_files, self.bank_id_box, p.bank_id, p.source],
                                api_name="build_bank", show_progress_on=[self.bank_report], **p.model_events)

    @user_errors
    def build_bank_files(self, normal, defects=None, name="my bank", progress=gr.Progress()):
        if not normal:
            raise MRADError("upload at least one normal (defect-free) image")
        name = (name or "my bank").strip()[:60] or "my bank"
        progress(0, desc="encoding the bank images")
        bank_id, notes = self.page.gpu_build_bank([str(p) for p in normal], [str(p) for p in defects or []], name,
                                             progress=self.page.reporter(progress))
        report = f"**Bank ready:** {self.page.service.catalogue.bank_info(bank_id)}. Memory bank switched to *My bank*." + \
            "".join(f"\n- {n}" for n in notes)
        files = [str(p) for p in self.page.service.catalogue.bank_files(bank_id)]
        return report, files, bank_id, bank_id, "custom"  # a plain value: the /build_bank API returns it
