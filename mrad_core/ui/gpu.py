"""Model calls of the app, run the way a ZeroGPU Space runs them, and user errors that reach the user intact.

    analyze = model_call(settings, "analyze")(service.analyze)   # its ZeroGPU duration from the table below
    @gpu_call(settings, duration=lambda images, *a, **k: 10 + 2 * len(images))
    def score(images, ...): ...            # returns plain, picklable data

On a ZeroGPU Space (SPACES_ZERO_GPU is set) `spaces.GPU` runs each call in a forked worker process: arguments and
the return value are pickled, nothing the worker creates reaches the main process, and the GPU is released when the
call returns. So a decorated function must take everything it needs as arguments (session state, files) and
return everything the page needs. With MRAD_ZEROGPU_EMULATE=1 every call runs in a fresh fork of this process in
the same way, to check that locally (and in the tests). Elsewhere the function runs as it is.

Inside the worker: `torch.set_num_threads(1)` comes first (a child forked from a process that already ran a
multi-threaded torch op hangs on its first parallel CPU op otherwise), and MRADError becomes a gr.Error there
(other exceptions would reach the user as "ZeroGPU worker error: <class name>").
"""
from __future__ import annotations

import functools
import logging
import multiprocessing

import gradio as gr

from ..errors import MRADError, first_line

log = logging.getLogger("mrad.app")

REFERENCE_IMAGES = 4  # the calibrated scale's normal reference images (assets/examples/*_good.png)

# Every model call of the app -> how many images it encodes, from its arguments. Its ZeroGPU duration (seconds) is
# settings.gpu_seconds_base + settings.gpu_seconds_per_image × that [MRAD_GPU_SECONDS_BASE, MRAD_GPU_SECONDS].
IMAGES = {
    # Detect: the image, plus the reference images when the calibrated scale is computed with it
    "analyze": lambda *a, calibrate=False, **k: 1 + REFERENCE_IMAGES * calibrate,
    "calibrate": lambda *a, **k: REFERENCE_IMAGES,  # the calibrated scale of a result on screen
    "score_chunk": lambda pixels, *a, **k: len(pixels),  # Batch: one chunk
    "build_bank": lambda normal, defects=(), *a, **k: len(normal) + len(defects or ()),  # Bank tab
    # Teach: the example added (or none removed) and the image on screen, plus the new bank's reference images
    "teach": lambda *a, calibrate=False, **k: 2 + REFERENCE_IMAGES * calibrate,
    "profile": lambda images, *a, **k: len(images or ()),  # Calibrate: the known-good images
    "explain": lambda *a, **k: 1,  # Why this score: the image on screen (a map point or the top entries)
}


def seconds(settings, call: str):
    """The ZeroGPU duration of a model call named in IMAGES: a function of the call's arguments."""
    images = IMAGES[call]
    return lambda *a, **k: settings.gpu_seconds_base + settings.gpu_seconds_per_image * images(*a, **k)


def user_errors(fn):
    """MRADError -> gr.Error with its text (one log line, no traceback); anything unexpected -> a short gr.Error
    (its traceback in the log)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except MRADError as e:
            log.info("user error in %s: %s", fn.__name__, first_line(e, 300))
            raise gr.Error(str(e), duration=None, print_exception=False) from None
        except Exception as e:
            log.exception("request failed")
            raise gr.Error(f"Unexpected error ({type(e).__name__}: {str(e)[:200]}); the server keeps running. "
                           "Please report it with the image if it persists.", print_exception=False) from None
    return wrapper


def _in_worker(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch
        torch.set_num_threads(1)
        return fn(*args, **kwargs)
    return wrapper


def _child(conn, fn, args, kwargs):
    try:
        conn.send((True, fn(*args, **kwargs)))
    except BaseException as e:  # sent back as it is: the parent raises it
        conn.send((False, e))
    finally:
        conn.close()


def in_fresh_fork(fn):
    """Run every call of `fn` in a new forked process, pickling the result back (ZeroGPU's way, without a GPU)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = multiprocessing.get_context("fork")
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child, args=(send, fn, args, kwargs), daemon=True)
        child.start()
        send.close()
        try:
            ok, payload = receive.recv()
        except EOFError:
            child.join()
            raise RuntimeError(f"the GPU worker process died (exit code {child.exitcode})") from None
        child.join()
        if ok:
            return payload
        raise payload
    return wrapper


def gpu_call(settings, duration=None):
    """Decorator for a model call: a ZeroGPU call on a ZeroGPU Space (with `duration` in seconds, a number or a
    function of the call's arguments), a fresh fork per call with MRAD_ZEROGPU_EMULATE=1, else the function."""
    def decorate(fn):
        inner = user_errors(_in_worker(fn))
        if settings.zero_gpu:
            import spaces
            return spaces.GPU(duration=duration)(inner) if duration else spaces.GPU(inner)
        if settings.emulate_zero_gpu:
            return in_fresh_fork(inner)
        return user_errors(fn)
    return decorate



def model_call(settings, call: str):
    """gpu_call with the duration of `call` in IMAGES."""
    return gpu_call(settings, seconds(settings, call))
