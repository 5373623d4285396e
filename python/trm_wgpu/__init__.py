"""Tiny Recursive Model (TRM, arXiv 2510.04871) inference on the CPU and on
any GPU wgpu reaches (Vulkan, Metal, DX12, GL), from NumPy.

    >>> import numpy as np, trm_wgpu
    >>> model = trm_wgpu.load("step_827")            # beside its all_config.yaml
    >>> out = model.solve(np.load("all__inputs.npy"), backend="gpu")
    >>> answers = out["logits"].argmax(-1)

``solve`` returns the arrays ``trm run`` writes, under the same names, and
takes ``trm run``'s options under the names of its flags.
"""

from ._native import InputError, Model, TrmError, __version__, adapters, load

__all__ = ["InputError", "Model", "TrmError", "__version__", "adapters", "load"]
