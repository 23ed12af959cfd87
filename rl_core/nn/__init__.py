"""Shared neural-network blocks (reused by every agent, never copied)."""

from rl_core.nn.convnet import FrameDecoder, FrameEncoder
from rl_core.nn.edm import (
    EDMConfig,
    EDMSamplerConfig,
    FourierFeatures,
    add_noise,
    edm_loss,
    edm_sample,
    edm_target,
    euler_sample,
    heun_sample,
    karras_sigmas,
    precondition,
    sample_sigma_train,
)
from rl_core.nn.gpt import GPT, GPTConfig, KVCache
from rl_core.nn.layers import (
    AdaLayerNorm,
    CrossAttention,
    MultiDiscreteEmbedding,
    step_causal_mask,
)
from rl_core.nn.sampling import sample_logits
from rl_core.nn.vq import EMACosineCodebook

__all__ = [
    "GPT",
    "AdaLayerNorm",
    "CrossAttention",
    "GPTConfig",
    "KVCache",
    "MultiDiscreteEmbedding",
    "sample_logits",
    "step_causal_mask",
    "EMACosineCodebook",
    "FrameDecoder",
    "FrameEncoder",
    "EDMConfig",
    "EDMSamplerConfig",
    "FourierFeatures",
    "add_noise",
    "edm_loss",
    "edm_sample",
    "edm_target",
    "euler_sample",
    "heun_sample",
    "karras_sigmas",
    "precondition",
    "sample_sigma_train",
]
