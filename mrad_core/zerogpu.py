"""TEMPORARY ADAPTER (issue 19): the ZeroGPU wrapper moved to mrad_core/ui/gpu.py (it imports Gradio, which only
ui/ may). Kept only until mrad_core/ui/detect.py, batch_tab.py, bank_tab.py and evaluate_tab.py import
`from .gpu import user_errors`; then delete this file."""
from .ui.gpu import gpu_call, in_fresh_fork, model_call, user_errors  # noqa: F401
