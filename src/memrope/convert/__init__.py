"""Wan DiT weights both ways: official Wan / Self-Forcing / LongLive names <-> diffusers ``WanTransformer3DModel``.

The two layouts hold the same tensors, with the same shapes, under different names (the table is
diffusers' ``convert_wan_transformer_to_diffusers``; the modulation tables are ``[1, 6, dim]`` per
block and ``[1, 2, dim]`` for the head in both, so nothing is reshaped):

============================================  ==============================================
official (memrope's ``CausalWanModel``)        diffusers ``WanTransformer3DModel``
============================================  ==============================================
``patch_embedding.*``                          ``patch_embedding.*``
``text_embedding.{0,2}.*``                     ``condition_embedder.text_embedder.linear_{1,2}.*``
``time_embedding.{0,2}.*``                     ``condition_embedder.time_embedder.linear_{1,2}.*``
``time_projection.1.*``                        ``condition_embedder.time_proj.*``
``blocks.i.modulation``                        ``blocks.i.scale_shift_table``
``blocks.i.self_attn.{q,k,v,o}.*``             ``blocks.i.attn1.{to_q,to_k,to_v,to_out.0}.*``
``blocks.i.self_attn.norm_{q,k}.weight``       ``blocks.i.attn1.norm_{q,k}.weight``
``blocks.i.cross_attn.*``                      ``blocks.i.attn2.*`` (as ``self_attn``)
``blocks.i.norm3.*`` (affine, before cross)    ``blocks.i.norm2.*``
``blocks.i.norm2.*`` (no weights in either)    ``blocks.i.norm3.*``
``blocks.i.ffn.{0,2}.*``                       ``blocks.i.ffn.net.0.proj.*`` / ``ffn.net.2.*``
``head.head.*``                                ``proj_out.*``
``head.modulation``                            ``scale_shift_table``
============================================  ==============================================

Conversion only renames: the output dicts hold the input tensor objects themselves, so a round
trip is bit-exact. Both directions are strict: a name outside the table raises ``ValueError``
naming it.

Also here: the configs both ways (:func:`diffusers_config`, :func:`wan_config_from_diffusers`,
:func:`wan_config_from_state_dict`), reading a diffusers transformer from a folder or the Hub
(:func:`read_diffusers_transformer`, :func:`load_diffusers_into_wan`) and writing either layout
(:func:`write_diffusers_folder`, :func:`write_original_file`). This module never imports diffusers;
``memrope convert`` and :func:`memrope.cli.convert.convert_checkpoint` convert checkpoint files.
"""

from memrope.convert.files import (
    DEFAULT_MAX_SHARD_BYTES,
    LAYOUTS,
    ConversionResult,
    Layout,
    is_diffusers_source,
    load_diffusers_into_wan,
    read_diffusers_transformer,
    wan_config_from_json,
    write_diffusers_folder,
    write_original_file,
)
from memrope.convert.names import (
    DIFFUSERS_CLASS_NAME,
    DIFFUSERS_QK_NORM,
    check_official_state_dict,
    describe_config,
    diffusers_config,
    from_diffusers_state_dict,
    official_shapes,
    to_diffusers_state_dict,
    wan_config_from_diffusers,
    wan_config_from_state_dict,
)

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "DIFFUSERS_CLASS_NAME",
    "DIFFUSERS_QK_NORM",
    "LAYOUTS",
    "ConversionResult",
    "Layout",
    "check_official_state_dict",
    "describe_config",
    "diffusers_config",
    "from_diffusers_state_dict",
    "is_diffusers_source",
    "load_diffusers_into_wan",
    "official_shapes",
    "read_diffusers_transformer",
    "to_diffusers_state_dict",
    "wan_config_from_diffusers",
    "wan_config_from_json",
    "wan_config_from_state_dict",
    "write_diffusers_folder",
    "write_original_file",
]
