"""StyleGAN2 in pure PyTorch: mapping, synthesis ('skip') and discriminator ('resnet').

Modules: :mod:`.ops` (the functional core), :mod:`.config` (hyperparameters), :mod:`.layers` (shared layers),
:mod:`.generator`, :mod:`.discriminator`, and the NVlabs pickle reader (:mod:`.nvlabs_pickle`: the file as
data, nothing run) and loader (:mod:`.nvlabs_load`: that data into these modules). This package's namespace is
the networks' public API.

No custom CUDA/C++ ops, so everything runs and exports to ONNX on CPU. The module tree and the
parameter/buffer names follow NVlabs ``stylegan2-ada-pytorch`` (``training/networks.py``), so the state dict
of an official checkpoint copies over key by key (:mod:`.nvlabs_load` does that):

* ``Generator``: ``mapping`` (:class:`MappingNetwork`: ``fc0 … fc{N-1}``, ``w_avg``, optional ``embed``) and
  ``synthesis`` (:class:`SynthesisNetwork`: blocks ``b4, b8, …``; ``b4.const``; ``b{res}.conv0`` (up),
  ``.conv1``, ``.torgb``; every :class:`SynthesisLayer` holds ``affine``, ``weight``, ``bias``,
  ``noise_strength``, ``noise_const``, ``resample_filter``).
* ``Discriminator``: blocks ``b{res}`` (``fromrgb`` in the first, ``conv0``, ``conv1``, ``skip``) and the
  epilogue ``b4`` (``mbstd``, ``conv``, ``fc``, ``out``); ``mapping`` when conditioned.

Conventions (DESIGN §7): functional core (``upfirdn2d``, ``conv2d_resample``, ``modulated_conv2d``,
``bias_act`` are plain functions the layers call), equalised learning rate (weights stored at unit scale,
the gain ``1/sqrt(fan_in)`` applied at run time), no randomness in ``forward`` other than through an explicit
``torch.Generator``, no training-only logic inside modules (style mixing is :func:`mix_styles`).

``modulated_conv2d`` has two numerically equivalent forms: *fused* (per-sample weights, grouped convolution
with ``groups = batch``) and *non-fused* (scale the input by the styles, one shared convolution, scale the
output by the demodulation coefficients). Only the non-fused form exports to ONNX with a dynamic batch axis
(DESIGN §5); switch with :meth:`Generator.set_fused_modconv` or the ``fused_modconv`` forward argument.
The default is non-fused: it exports, and on CPU it trained faster in every run (64² G+D step, batch 8:
13.6–15.2 vs 3.2–11.6 images/s on a shared 2-core CPU, ``benchmarks/stylegan2_speed.py``), with no consistent
inference difference; NVlabs likewise trains non-fused on GPU and uses the fused form only for fp32 inference.
"""

from __future__ import annotations

from models.stylegan2.config import (
    DiscriminatorConfig,
    EpilogueConfig,
    GeneratorConfig,
    MappingConfig,
    SynthesisConfig,
)
from models.stylegan2.discriminator import Discriminator, DiscriminatorBlock, DiscriminatorEpilogue, MinibatchStdLayer
from models.stylegan2.generator import (
    Generator,
    MappingNetwork,
    NoiseMode,
    SynthesisBlock,
    SynthesisLayer,
    SynthesisNetwork,
    ToRGBLayer,
    mix_styles,
    sample_mixing_cutoff,
)
from models.stylegan2.layers import Conv2dLayer, FullyConnectedLayer
from models.stylegan2.ops import (
    Padding,
    bias_act,
    conv2d_resample,
    downsample2d,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upfirdn2d,
    upsample2d,
)

__all__ = [
    "Conv2dLayer",
    "Discriminator",
    "DiscriminatorBlock",
    "DiscriminatorConfig",
    "DiscriminatorEpilogue",
    "EpilogueConfig",
    "FullyConnectedLayer",
    "Generator",
    "GeneratorConfig",
    "MappingConfig",
    "MappingNetwork",
    "MinibatchStdLayer",
    "NoiseMode",
    "Padding",
    "SynthesisBlock",
    "SynthesisConfig",
    "SynthesisLayer",
    "SynthesisNetwork",
    "ToRGBLayer",
    "bias_act",
    "conv2d_resample",
    "downsample2d",
    "mix_styles",
    "modulated_conv2d",
    "normalize_2nd_moment",
    "sample_mixing_cutoff",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]
