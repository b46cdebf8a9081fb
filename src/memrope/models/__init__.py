"""Video DiT models and the forward pass they share.

* :mod:`memrope.models.wan`: :class:`~memrope.models.wan.CausalWanModel`, the causal Wan2.1 DiT.
* :mod:`memrope.models.wan_forward`: its forward pass, as functions that run on any module tree with
  the official Wan names (also used by the upstream adapter).
* :mod:`memrope.models.wan_config`: :class:`~memrope.models.wan_config.WanConfig` and
  :meth:`~memrope.models.wan_config.WanConfig.from_module`.

Nothing is imported here: import the submodule you need.
"""

__all__: list[str] = []
