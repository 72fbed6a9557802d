"""service: the HTTP worker only, torch-free (FastAPI + onnxruntime; geometry and formats come from ``facecore``).

``app`` (factory, lifespan), ``api`` (routes, schemas, dependencies), ``engine`` (onnxruntime sessions, dynamic
batching), ``pipeline`` (request → codes → networks → facecore geometry/formats → files), ``store`` (content-addressed
results), ``settings`` (``FACE_*`` environment), ``metrics`` (Prometheus), ``static`` (the web viewer),
``bundled`` (the embedded default bundle).
"""
