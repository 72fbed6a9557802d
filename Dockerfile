# syntax=docker/dockerfile:1.7
# Two targets:
#   serve  – the API on onnxruntime-gpu (CUDA 12 runtime), no torch, non-root.  docker compose up
#   train  – CUDA PyTorch for `python -m training.run` (pytorch3d optional, see PYTORCH3D below).

ARG CUDA_RUNTIME=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG CUDA_DEVEL=nvidia/cuda:12.6.3-cudnn-devel-ubuntu24.04

# ---------------------------------------------------------------------------------------------- web viewer
FROM node:20-slim AS viewer
WORKDIR /src/service/static
COPY service/static/package.json service/static/package-lock.json ./
RUN npm ci --omit=dev

# ---------------------------------------------------------------------------------------------- serve
FROM ${CUDA_RUNTIME} AS serve
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv curl \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY service ./service
COPY --from=viewer /src/service/static/node_modules ./service/static/node_modules
RUN pip install --no-cache-dir ".[serve,gpu]"
RUN useradd --create-home --uid 10001 face && mkdir -p /data/results && chown face /data/results
USER face
ENV FACE_RESULTS_DIR=/data/results
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s CMD curl -fsS http://127.0.0.1:8000/health/ready || exit 1
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------- train
FROM ${CUDA_DEVEL} AS train
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126
ARG PYTORCH3D=0
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git build-essential \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
# CUDA torch first, at the exact version the project pins, so `.[train]` does not replace it.
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX}
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir ".[train]"
# Optional: pytorch3d from source (the project's own renderer is pure PyTorch and needs nothing).
RUN if [ "$PYTORCH3D" = "1" ]; then pip install --no-cache-dir "git+https://github.com/facebookresearch/pytorch3d.git"; fi
ENTRYPOINT ["python", "-m", "training.run"]
CMD ["--help"]
