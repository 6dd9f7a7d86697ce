"""Make it yours, under the Detect results: calibrate an inspection profile on your normal images, teach the memory
bank ("This is normal", "Mark the defect"), and see why a score is high. (Being built: issue 11's UI.)"""
from __future__ import annotations


class TeachPanel:
    def __init__(self, page):
        self.page = page

    def build(self):
        pass

    def wire(self):
        pass
