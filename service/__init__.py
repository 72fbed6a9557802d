"""service: the HTTP worker only, torch-free (FastAPI + onnxruntime; geometry and formats come from ``facecore``).

``app`` (factory, lifespan), ``api`` (routes, schemas, dependencies), ``engine`` (onnxruntime sessions, dynamic
batching), ``pipeline`` (request → codes → networks → facecore geometry/formats → files), ``store`` (content-addressed
results), ``settings`` (``FACE_*`` environment), ``metrics`` (Prometheus), ``static`` (the web viewer),
``bundled`` (the embedded default bundle).
"""

import os

# numpy's OpenBLAS keeps its threads busy-waiting after every call; in the service, whose numpy work is small matrices
# beside onnxruntime's threads, they took the cores from everything else. On a 2-core CPU, /generate paired with
# bundle 1.0 over HTTP (p50): 48 → 21 ms with one BLAS thread (one 150² solve had taken 21 ms; the albedo graph 17 →
# 8.5 ms). Set here, before the entry points (``python -m service``, ``albedogan``, ``albedogan-serve``) import
# numpy; an OPENBLAS_NUM_THREADS of your own is kept, and a process that imported numpy first is not changed.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
