"""models: the PyTorch networks and the face model, importable without the service.

``face`` (FaceModel: linear shape + expression, skinning, UV, landmarks; loaders for the default, FLAME, npz),
``render`` (differentiable rasteriser, cameras, SH shading), ``stylegan2`` (the networks; ``nvlabs_pickle`` /
``nvlabs_load`` read and load official NVlabs pickles), ``safe_pickle`` (the one restricted unpickler),
``encoder`` (IResNet → face codes), ``albedo_head``, ``displacement`` (DECA-style detail decoder), ``identity``
(dlib's face-recognition ResNet in torch, ``dlib_dat`` its weight parser), ``landmarks`` (68-point ground-truth
labeller), ``arcface_loader``. Torch-free geometry and file formats come from ``facecore``.
"""
