# MRAD app image, following the Hugging Face Spaces Docker conventions:
# non-root user with uid 1000, HF_HOME in a writable directory, Gradio on 0.0.0.0:7860.
#   docker build -t mrad .                       # CPU (torch from the PyTorch CPU index)
#   docker build -t mrad --build-arg DEVICE=cuda .   # CUDA (PyPI torch wheels bundle the CUDA 13 runtime: driver >= 580)
#   docker build -t mrad --build-arg DEVICE=cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#                                                    # CUDA 12 wheels, for older drivers (T4/L4 hosts, many clouds)
#   docker run -p 7860:7860 [--gpus all] -v $PWD/checkpoints:/home/user/app/checkpoints -v $PWD/cache:/home/user/app/cache mrad
# On a Space, set the variable DEVICE=cuda for GPU hardware (Space variables are passed as build args).
FROM python:3.11-slim

ARG DEVICE=cpu
# CUDA builds: a wheel index for torch/torchvision (empty = PyPI's CUDA 13 build, which needs NVIDIA driver >= 580)
ARG TORCH_INDEX=
# PRELOAD=1 downloads the backbone (Hub) and the VisA heads and banks (the authors' Google Drive, or MRAD_HUB_REPO)
# into the image at build time (network access needed then)
ARG PRELOAD=0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# OpenCV (headless) and Pillow need these at run time
RUN apt-get update \
    && apt-get install -y --no-install-recommends libglib2.0-0 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd -m -u 1000 user
USER user
ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    HF_HOME=/home/user/.cache/huggingface \
    MRAD_CACHE_DIR=/home/user/.cache/mrad \
    MRAD_PROJECT_DIR=/home/user/app \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860
WORKDIR /home/user/app

# dependencies first: this layer is rebuilt only when requirements.txt (or DEVICE) changes
COPY --chown=user requirements.txt .
RUN case "$DEVICE" in \
      cpu) grep -E '^(torch|torchvision)==' requirements.txt \
             | xargs pip install --user --index-url https://download.pytorch.org/whl/cpu ;; \
      cuda) if [ -n "$TORCH_INDEX" ]; then grep -E '^(torch|torchvision)==' requirements.txt \
             | xargs pip install --user --index-url "$TORCH_INDEX"; fi ;; \
      *) echo "DEVICE must be cpu or cuda, not $DEVICE" >&2; exit 1 ;; \
    esac \
    && pip install --user -r requirements.txt

# then the code
COPY --chown=user . .
RUN pip install --user --no-deps -e . \
    && mkdir -p checkpoints cache "$HF_HOME" "$MRAD_CACHE_DIR" \
    && if [ "$PRELOAD" = "1" ]; then python -c "from mrad_core.loading import resolve_artefacts; \
print(resolve_artefacts().report())"; fi

# the OpenVINO IR of the encoder, converted now when the backbone is in the image (PRELOAD=1, or preloaded by the
# Space): the first start then compiles it in seconds instead of converting for minutes (CPU images only; without
# the backbone this step only says so, and the first start converts in the background while PyTorch answers)
RUN if [ "$DEVICE" = "cpu" ]; then python -m mrad_core.warmup; fi

EXPOSE 7860
CMD ["python", "app.py"]
