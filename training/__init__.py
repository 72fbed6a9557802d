"""training: the procedures that train the networks of ``models`` and export the bundle the service loads.

``run`` is the CLI (``python -m training.run STAGE``); ``texture`` (extraction), ``albedo`` (AlbedoGAN
pretraining), ``shape`` and ``alternate`` (shape model, alternate descent), ``export`` (ONNX bundle); shared
plumbing in ``checkpoint``, ``config``, ``distributed``, ``losses`` and ``metrics``; data sources in ``data``.
"""
