"""The Evaluate tab: labelled images of your product -> metrics, curves and the worst mistakes per variant.
(Being built: issue 12's UI.)"""
from __future__ import annotations


class EvaluateTab:
    def __init__(self, page):
        self.page = page

    def build(self):
        pass

    def wire(self):
        pass
