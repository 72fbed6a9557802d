"""facecore: the torch-free core every part of the project shares (numpy, pillow, dlib, pygltflib, pydantic).

- ``geometry``  face-model arrays (the ``face_model.npz`` schema) and numpy decode: codes → vertices (blendshapes,
  skinning), normals, UV sampling, the detailed (displaced) mesh.
- ``color``     sRGB transfer functions and 8-bit quantisation.
- ``detect``    face detection, 5-point landmarks and similarity alignment (dlib).
- ``texture``   texture unwrap into the UV layout, mirror fill, SH de-lighting.
- ``formats``   PNG (8/16-bit), normal maps, OBJ + MTL, GLB with morph targets; byte-deterministic.
- ``bundle``    the model-bundle contract between training's export and the service (manifest, loading).

Rules (enforced by ``tests/test_layout.py``): nothing here imports torch or FastAPI, and nothing here imports
``models``, ``training`` or ``service``. ``models`` (torch networks) and ``service`` (the HTTP worker) both build on it.
"""
