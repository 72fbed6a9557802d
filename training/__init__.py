"""training: the procedures that train the networks of ``models`` and export the bundle the service loads.

``run`` is the CLI (``python -m training.run STAGE``). Stages: ``texture`` (extract, with ``face_fit``),
``albedo`` (AlbedoGAN pretraining), ``alternate`` (the shape and alternate-descent stages; ``shape`` holds the
shape model's configuration and construction), ``export`` (ONNX bundle). Every stage's trainer subclasses the one
loop in ``loop``; step objectives in ``objectives`` built from the pure ``losses``; ``evaluation`` (NoW, landmarks,
albedo error, KID) is shared with ``benchmarks/``; plumbing in ``checkpoint``, ``config``, ``distributed``,
``weights``, ``images``, ``augment``; data sources in ``data``.
"""
