"""Training data sources: the synthetic source (``synthetic`` scenes and renders over ``procedural_albedo`` maps,
``skin`` optics, ``face_layout``, ``sampling``), AlbedoGAN's maps (``albedo_maps``, ``images``), the shape model's
identity groups (``groups``) and the paper's StyleGAN2 recipe (``stylegan_recipe``)."""
