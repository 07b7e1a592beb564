# vSLERP Studio, self-hosted on a GPU machine (NVIDIA driver + NVIDIA Container Toolkit):
#
#   docker build -t vslerp-studio .
#   docker run --gpus all -p 7860:7860 -v vslerp-hf:/home/user/.cache/huggingface vslerp-studio
#
# The default model (Karlo) downloads from the Hugging Face hub on first start into the
# volume above, so later starts are quick. Another model: `-e VSLERP_MODEL=stable-unclip-l`,
# `-e VSLERP_MODEL=kandinsky-2-2` (768 px up to 1024; ~6.3 GB of fp16 weights, from two
# repositories, plus activations), or a local pipeline directory mounted into the container.
# The app listens on 0.0.0.0:7860.
#
# The CUDA runtime base brings the NVIDIA container setup; torch's wheels from PyPI carry
# their own CUDA libraries, so the base only needs a driver recent enough for them.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A non-root user with uid 1000 (as on Hugging Face Spaces). Ubuntu's images ship a user
# "ubuntu" with that uid: remove it first.
RUN (userdel -r ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 --shell /bin/bash user
USER 1000
ENV HOME=/home/user \
    VIRTUAL_ENV=/home/user/venv \
    PATH=/home/user/venv/bin:$PATH \
    HF_HOME=/home/user/.cache/huggingface \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False
WORKDIR /home/user/app

# Dependencies first: this layer is rebuilt only when requirements.txt changes. The same file
# a Space and `pip install -e .` install (tests/test_space.py checks the parsed instructions).
RUN python3 -m venv "$VIRTUAL_ENV"
COPY --chown=1000:1000 requirements.txt ./
RUN pip install -r requirements.txt

COPY --chown=1000:1000 . .
RUN mkdir -p "$HF_HOME"

EXPOSE 7860
# The first start downloads the model: give it time before the health check counts.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30m --retries=3 \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7860/config', timeout=5)"
CMD ["python3", "app.py"]
