"""The page around one Service: the header, the controls every tab shares (memory bank, variants, session state),
the tabs, and the model calls they make.

Each tab is a class with `build()` (its components, inside the page's layout) and `wire()` (its events); handlers
return {component: value}. Model calls go through gpu.py's `model_call` (ZeroGPU-ready: plain data in, plain data out,
no model work outside a call; their durations in one table there).
"""
from __future__ import annotations

import gradio as gr

from .. import batch, progress, records
from ..config import VARIANTS
from ..service import Service
from . import text
from .bank_tab import BankTab
from .batch_tab import BatchTab
from .detect import DetectTab
from .evaluate_tab import EvaluateTab
from .gpu import model_call
from .monitor_tab import MonitorTab
from .teach import TeachPanel


class Page:
    """Builds and wires the whole UI; tests reach components and handlers through it (`demo.mrad`)."""

    def __init__(self, service: Service):
        self.service = service
        self.settings = service.settings
        self.concurrency = self.settings.concurrency or (2 if service.device.type == "cuda" else 1)
        self.model_events = dict(concurrency_limit=self.concurrency, concurrency_id="model")
        # model calls: plain data in, plain data out (ZeroGPU workers); user errors arrive as messages
        call = lambda name: model_call(self.settings, name)  # noqa: E731
        self.gpu_analyze = call("analyze")(service.analyze)
        self.gpu_calibrate = call("calibrate")(service.calibrate)
        self.gpu_chunk = call("score_chunk")(lambda *a, **k: batch.score_chunk(service, *a, **k))
        self.gpu_build_bank = call("build_bank")(service.build_bank)
        self.detect, self.teach = DetectTab(self), TeachPanel(self)
        self.batch, self.bank, self.evaluate = BatchTab(self), BankTab(self), EvaluateTab(self)
        self.monitor = MonitorTab(self)
        # (tab label, its parts in order): the teaching panel sits under the Detect results
        self.tabs = [("Detect", [self.detect, self.teach]), ("Batch", [self.batch]), ("Bank", [self.bank]),
                     ("Evaluate", [self.evaluate]), ("Monitor", [self.monitor])]  # short labels: they fit a phone

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="MRAD: zero-shot anomaly detection", delete_cache=(3600, 7200)) as demo:
            gr.Markdown(text.INTRO)
            self.notice = gr.Markdown(elem_id="notice")
            self.status = gr.Markdown(self.service.status(), elem_id="status")
            with gr.Row(equal_height=True):
                self.source = gr.Dropdown(self.service.catalogue.choices(), value=self.service.catalogue.default(),
                                          label="Memory bank & heads", scale=3, min_width=300, elem_id="source")
                self.variants = gr.CheckboxGroup([(records.name(v), v) for v in VARIANTS], value=list(VARIANTS),
                                                 label="Variants", scale=2, min_width=300, elem_id="variants")
            with gr.Accordion("What is loaded / missing", open=False) as self.source_panel:
                self.source_info = gr.Markdown()
            self.analysis = gr.State(None)  # records.Analysis of the image on screen
            self.levels = gr.State({})  # calibration key -> {variant: viz.Calibration} computed in GPU calls
            self.bank_id = gr.State(None)  # the custom bank of this session (its files live on the server)
            with gr.Tabs():
                for label, parts in self.tabs:
                    with gr.Tab(label, id=label.split()[0].lower()):
                        for part in parts:
                            part.build()
            with gr.Accordion("What the numbers mean", open=False):
                gr.Markdown(text.HELP)
            gr.Markdown(text.FOOTER.format(paper=self.settings.paper_url))
            self.wire(demo)
        demo.queue(default_concurrency_limit=self.concurrency, max_size=self.settings.queue_size)
        demo.mrad = self
        return demo

    def wire(self, demo):
        for _, parts in self.tabs:
            for part in parts:
                part.wire()
        gr.on([self.source.change, self.bank_id.change, demo.load], self.describe, [self.source, self.bank_id],
              [self.source_info, self.source_panel, self.variants, self.notice], api_visibility="private",
              show_progress="hidden")
        gr.Timer(1).tick(self.status_text, None, self.status, api_name="poll_status", api_visibility="private",
                         show_progress="hidden", queue=False)
        gr.api(self.status_text, api_name="status", queue=False, concurrency_limit=None)

    # ------------------------------------------------------------------ shared helpers
    def reporter(self, progress):
        """progress(fraction, text) for the service; None on ZeroGPU (arguments of a GPU call are pickled)."""
        return None if self.settings.zero_gpu else (lambda fraction, words: progress(fraction, desc=words))

    def source_of(self, source) -> str:
        return self.service.catalogue.default() if source in (None, "") else self.service.catalogue.check(source)

    calibration_key = staticmethod(Service.calibration_key)

    def describe(self, source, bank_id):
        facts = self.service.catalogue.facts(source, bank_id)
        available = self.service.catalogue.variants(source, bank_id)
        missing = bool(text.missing_files(self.settings))
        return {self.source_info: text.facts_md(facts, self.settings),
                self.source_panel: gr.Accordion(open=facts.missing or missing),
                self.variants: gr.CheckboxGroup(value=list(available), info=text.variant_note(available)),
                self.notice: text.startup_notice(self.service)}

    def status_text(self) -> str:
        """What the server is loading or doing, its device and precision, and each download under way (file, size,
        progress, where from)."""
        downloads = progress.describe()
        missing = "".join(f"⚠️ {var} not found: `{path}` · " for var, path in text.missing_files(self.settings))
        return missing + self.service.status() + "".join(f"  \n⬇️ {line}" for line in downloads.splitlines())

    def api_defaults(self) -> dict:
        """Endpoint name -> defaults of its inputs after the first (for raw HTTP calls that send only the first)."""
        from inspect import signature
        return {name: [p.default for p in list(signature(fn).parameters.values())[1:]]
                for name, fn in (("predict", self.detect.predict), ("evaluate", self.evaluate.evaluate_api),
                                 ("monitor_video", self.monitor.monitor_video))}


def build_demo(service: Service) -> gr.Blocks:
    """The whole UI around one Service (tests pass their own)."""
    return Page(service).build()
