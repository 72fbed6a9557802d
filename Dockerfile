# Two targets; every base image is a build argument, the defaults are the GPU images:
#   serve  – the API, no torch, non-root. GPU (default): CUDA runtime + onnxruntime-gpu     docker compose up
#            CPU: --build-arg SERVE_BASE=debian:bookworm-slim --build-arg ORT=cpu      docker/compose.cpu.yml
#            (no image registry reachable: docker/build-local.sh makes a Debian base from apt and builds this)
#   train  – CUDA PyTorch for `python -m training.run` (pytorch3d optional, see PYTORCH3D below).
# No `# syntax=` line: the builder's own frontend suffices, and pulling one would need a registry.

ARG SERVE_BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG TRAIN_BASE=nvidia/cuda:12.6.3-cudnn-devel-ubuntu24.04
# Any Debian/Ubuntu image works: npm comes from apt when the image has none.
ARG VIEWER_BASE=node:20-slim

# ---------------------------------------------------------------------------------------------- web viewer
FROM ${VIEWER_BASE} AS viewer
RUN command -v npm >/dev/null || (apt-get update && apt-get install -y --no-install-recommends npm \
    && rm -rf /var/lib/apt/lists/*)
WORKDIR /src/service/static
COPY service/static/package.json service/static/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

# ---------------------------------------------------------------------------------------------- serve
FROM ${SERVE_BASE} AS serve
# onnxruntime flavour: gpu (onnxruntime-gpu, CUDA 12) or cpu — the pyproject extra of that name
ARG ORT=gpu
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv curl \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY training ./training
COPY facecore ./facecore
COPY service ./service
COPY --from=viewer /src/service/static/node_modules ./service/static/node_modules
RUN pip install --no-cache-dir ".[serve,${ORT}]" && rm -rf build *.egg-info
RUN useradd --create-home --uid 10001 face && mkdir -p /data/results && chown face /data/results
USER face
ENV FACE_RESULTS_DIR=/data/results
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s CMD curl -fsS http://127.0.0.1:8000/health/ready || exit 1
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]

# ---------------------------------------------------------------------------------------------- train
FROM ${TRAIN_BASE} AS train
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
