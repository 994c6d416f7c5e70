#!/usr/bin/env python3
"""Writes the tiny random checkpoints of tests/fixtures/hf/<name>/ with transformers itself.

Each family: a config class built with tiny sizes, `AutoModelForCausalLM.from_config`
under a fixed seed, every parameter then redrawn from a seeded normal (so no two tensors
are equal and a fuse or stack in the wrong order shows in the bytes), cast to bf16 and
saved with `save_pretrained(safe_serialization=True)`. Next to it, `config.full.json` is
the family's real, full-size config (the config class with the released model's sizes)
so `wmapc check` is tested on real sizes; it has no weights.

Versions and seeds go to tests/fixtures/PROVENANCE.json, one entry per fixture (the
other entries, and the top-level versions of the older fixtures, are kept).

    /tmp/gv/bin/python scripts/make_fixtures.py              # every family below
    /tmp/gv/bin/python scripts/make_fixtures.py qwen2 gemma  # just these

Deterministic: the same versions and seeds give the same bytes. Only the named folders
are replaced; the older fixtures (llama, qwen3, …) were made by an earlier script and
are not rewritten here.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
HF = ROOT / "tests" / "fixtures" / "hf"
PROVENANCE = ROOT / "tests" / "fixtures" / "PROVENANCE.json"

# Tiny sizes every family starts from: 2 layers, width 32, 4 query heads of 8 sharing
# 2 key/value heads, vocabulary 128. Small enough that a fixture stays near 60 KB and the
# whole set near 1.5 MB.
TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    vocab_size=128,
    max_position_embeddings=64,
)
# Routed experts: 4 per layer, each of width 16.
TINY_MOE = dict(TINY, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2)

# name -> (config class, architecture, tiny kwargs, full-size kwargs, seed).
# Full sizes are the released checkpoints' config.json values named in each comment.
FAMILIES = {
    # Qwen/Qwen2.5-7B
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(TINY), dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
        max_position_embeddings=131072, rms_norm_eps=1e-6, tie_word_embeddings=False,
        max_window_layers=28, rope_theta=1000000.0), 1101),
    # ibm-granite/granite-3.1-8b-instruct
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(
        TINY, embedding_multiplier=12.0, residual_multiplier=0.22, logits_scaling=16.0,
        attention_multiplier=0.0078125, tie_word_embeddings=True), dict(
        hidden_size=4096, intermediate_size=12800, num_hidden_layers=40,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=49155,
        max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
        embedding_multiplier=12.0, residual_multiplier=0.22, logits_scaling=16.0,
        attention_multiplier=0.0078125, rope_theta=10000000.0), 1102),
    # allenai/OLMo-2-1124-7B
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(TINY), dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=100352,
        max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_theta=500000.0), 1103),
    # google/gemma-7b
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(TINY, tie_word_embeddings=True), dict(
        hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=16, head_dim=256, vocab_size=256000,
        max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True,
        hidden_activation="gelu_pytorch_tanh"), 1104),
    # google/gemma-2-9b
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(TINY, tie_word_embeddings=True), dict(
        hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
        num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000,
        max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True,
        sliding_window=4096, query_pre_attn_scalar=256, final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0), 1105),
    # allenai/OLMoE-1B-7B-0924
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(
        TINY, intermediate_size=16, num_experts=4, num_experts_per_tok=2), dict(
        hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
        num_attention_heads=16, num_key_value_heads=16, vocab_size=50304,
        max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
        num_experts=64, num_experts_per_tok=8), 1106),
    # mistralai/Mixtral-8x7B-v0.1
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(
        TINY, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2), dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
        max_position_embeddings=32768, rms_norm_eps=1e-5, tie_word_embeddings=False,
        num_local_experts=8, num_experts_per_tok=2, rope_theta=1000000.0), 1107),
    # Qwen/Qwen1.5-MoE-A2.7B
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(
        TINY_MOE, shared_expert_intermediate_size=48), dict(
        hidden_size=2048, intermediate_size=5632, moe_intermediate_size=1408,
        shared_expert_intermediate_size=5632, num_experts=60, num_experts_per_tok=4,
        num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=16,
        vocab_size=151936, max_position_embeddings=8192, rms_norm_eps=1e-6,
        tie_word_embeddings=False, decoder_sparse_step=1), 1108),
    # bigcode/starcoder2-7b
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", dict(TINY, use_bias=True), dict(
        hidden_size=4608, intermediate_size=18432, num_hidden_layers=32,
        num_attention_heads=36, num_key_value_heads=4, vocab_size=49152,
        max_position_embeddings=16384, norm_epsilon=1e-5, use_bias=True,
        sliding_window=4096, tie_word_embeddings=True, rope_theta=1000000.0,
        bos_token_id=0, eos_token_id=0), 1109),
    # microsoft/phi-2
    "phi": ("PhiConfig", "PhiForCausalLM", dict(TINY, num_key_value_heads=4), dict(
        hidden_size=2560, intermediate_size=10240, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=51200,
        max_position_embeddings=2048, layer_norm_eps=1e-5, partial_rotary_factor=0.4,
        tie_word_embeddings=False), 1110),
    # stabilityai/stablelm-2-1_6b
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(TINY, use_qkv_bias=True), dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=100352,
        max_position_embeddings=4096, layer_norm_eps=1e-5, partial_rotary_factor=0.25,
        use_qkv_bias=True, tie_word_embeddings=False), 1111),
    # stabilityai/stablelm-2-12b: parallel residual and per-head q/k LayerNorms
    "stablelm_parallel": ("StableLmConfig", "StableLmForCausalLM", dict(
        TINY, use_qkv_bias=False, use_parallel_residual=True, qk_layernorm=True), dict(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=100352,
        max_position_embeddings=4096, layer_norm_eps=1e-5, partial_rotary_factor=0.25,
        use_qkv_bias=False, use_parallel_residual=True, qk_layernorm=True,
        tie_word_embeddings=False), 1113),
    # CohereForAI/c4ai-command-r-plus: per-head q/k norms
    "cohere_qk_norm": ("CohereConfig", "CohereForCausalLM", dict(
        TINY, tie_word_embeddings=True, use_qk_norm=True), dict(
        hidden_size=12288, intermediate_size=33792, num_hidden_layers=64,
        num_attention_heads=96, num_key_value_heads=8, vocab_size=256000,
        max_position_embeddings=8192, layer_norm_eps=1e-5, logit_scale=0.8333333333333334,
        tie_word_embeddings=True, use_qk_norm=True), 1114),
    # google/gemma-3-1b-pt (the text-only Gemma 3)
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        TINY, tie_word_embeddings=True), dict(
        hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
        max_position_embeddings=32768, rms_norm_eps=1e-6, sliding_window=512,
        query_pre_attn_scalar=256, tie_word_embeddings=True), 1115),
    # microsoft/Phi-3.5-MoE-instruct
    "phimoe": ("PhimoeConfig", "PhimoeForCausalLM", dict(
        TINY, intermediate_size=16, num_local_experts=4, num_experts_per_tok=2,
        attention_bias=True, lm_head_bias=True), dict(
        hidden_size=4096, intermediate_size=6400, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=32064,
        max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
        num_local_experts=16, num_experts_per_tok=2, attention_bias=True,
        lm_head_bias=True), 1116),
    # THUDM/GLM-4-9B-0414
    "glm4": ("Glm4Config", "Glm4ForCausalLM", dict(
        TINY, attention_bias=True, pad_token_id=0, eos_token_id=1), dict(
        hidden_size=4096, intermediate_size=13696, num_hidden_layers=40,
        num_attention_heads=32, num_key_value_heads=2, head_dim=128, vocab_size=151552,
        max_position_embeddings=32768, rms_norm_eps=1e-5, attention_bias=True,
        partial_rotary_factor=0.5, tie_word_embeddings=False), 1117),
    # EleutherAI/pythia-1.4b
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(TINY), dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
        num_attention_heads=16, vocab_size=50304, max_position_embeddings=2048,
        rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False), 1118),
    # allenai/Olmo-3-1025-7B
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM", dict(TINY), dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=100278,
        max_position_embeddings=65536, rms_norm_eps=1e-6, sliding_window=4096,
        tie_word_embeddings=False), 1119),
    # HuggingFaceTB/SmolLM3-3B
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(
        TINY, tie_word_embeddings=True, pad_token_id=0), dict(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=4, vocab_size=128256,
        max_position_embeddings=65536, rms_norm_eps=1e-6, tie_word_embeddings=True), 1120),
    # Qwen/Qwen2-57B-A14B sizes; the tiny one is dense in layer 0 (`decoder_sparse_step` 2)
    "qwen2_moe_sparse_step": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(
        TINY_MOE, shared_expert_intermediate_size=48, decoder_sparse_step=2), dict(
        hidden_size=3584, intermediate_size=18944, moe_intermediate_size=2560,
        shared_expert_intermediate_size=20480, num_experts=64, num_experts_per_tok=8,
        num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        vocab_size=151936, max_position_embeddings=131072, rms_norm_eps=1e-6,
        tie_word_embeddings=False, decoder_sparse_step=1), 1121),
    # ByteDance-Seed/Seed-OSS-36B-Base
    "seed_oss": ("SeedOssConfig", "SeedOssForCausalLM", dict(
        TINY, attention_bias=True, attention_out_bias=False), dict(
        hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
        num_attention_heads=80, num_key_value_heads=8, head_dim=128, vocab_size=155136,
        max_position_embeddings=524288, rms_norm_eps=1e-6, attention_bias=True,
        attention_out_bias=False, tie_word_embeddings=False), 1122),
    # LGAI-EXAONE/EXAONE-4.0-32B
    "exaone4": ("Exaone4Config", "Exaone4ForCausalLM", dict(TINY), dict(
        hidden_size=5120, intermediate_size=27392, num_hidden_layers=64,
        num_attention_heads=40, num_key_value_heads=8, head_dim=128, vocab_size=102400,
        max_position_embeddings=131072, rms_norm_eps=1e-5, sliding_window=4096,
        tie_word_embeddings=False), 1123),
    # arcee-ai/AFM-4.5B
    "arcee": ("ArceeConfig", "ArceeForCausalLM", dict(TINY, bos_token_id=1, eos_token_id=2), dict(
        hidden_size=2560, intermediate_size=18432, num_hidden_layers=36,
        num_attention_heads=20, num_key_value_heads=4, head_dim=128, vocab_size=128004,
        max_position_embeddings=65536, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128001), 1124),
    # baidu/ERNIE-4.5-0.3B-PT
    "ernie4_5": ("Ernie4_5Config", "Ernie4_5ForCausalLM", dict(
        TINY, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2), dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=18,
        num_attention_heads=16, num_key_value_heads=2, head_dim=128, vocab_size=103424,
        max_position_embeddings=131072, rms_norm_eps=1e-5, use_bias=False,
        tie_word_embeddings=True), 1125),
    # state-spaces/mamba-2.8b-hf (tiny: `time_step_rank: "auto"`, resolved by the config
    # class to ⌈hidden/16⌉ = 2 before it is saved)
    "mamba": ("MambaConfig", "MambaForCausalLM", dict(
        hidden_size=32, intermediate_size=64, state_size=4, num_hidden_layers=2,
        vocab_size=128, expand=2, conv_kernel=4, time_step_rank="auto"), dict(
        hidden_size=2560, intermediate_size=5120, state_size=16, num_hidden_layers=64,
        vocab_size=50280, expand=2, conv_kernel=4, time_step_rank=160, use_bias=False,
        use_conv_bias=True, layer_norm_epsilon=1e-5, tie_word_embeddings=True), 1131),
    # ai21labs/Jamba-v0.1 (tiny: 4 layers, attention at 1 and 3 (period 2, offset 1), MoE
    # at 1 and 3 (period 2, offset 1), `mamba_dt_rank: "auto"` resolved to 2 on save)
    "jamba": ("JambaConfig", "JambaForCausalLM", dict(
        TINY, num_hidden_layers=4, num_experts=4, num_experts_per_tok=2, mamba_d_state=4,
        mamba_d_conv=4, mamba_expand=2, mamba_dt_rank="auto", attn_layer_period=2,
        attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
        use_mamba_kernels=False), dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=65536, num_experts=16,
        num_experts_per_tok=2, expert_layer_period=2, expert_layer_offset=1,
        attn_layer_period=8, attn_layer_offset=4, mamba_d_state=16, mamba_d_conv=4,
        mamba_expand=2, mamba_dt_rank=256, mamba_conv_bias=True, mamba_proj_bias=False,
        max_position_embeddings=262144, rms_norm_eps=1e-6, tie_word_embeddings=False,
        use_mamba_kernels=True), 1132),
    # ibm-ai-platform/Bamba-9B-v1 (tiny: 3 layers, attention at layer 1)
    "bamba": ("BambaConfig", "BambaForCausalLM", dict(
        TINY, num_hidden_layers=3, mamba_n_heads=4, mamba_d_head=16, mamba_n_groups=1,
        mamba_d_state=4, mamba_d_conv=4, mamba_expand=2, attn_layer_indices=[1]), dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        attn_layer_indices=[9, 18, 27], mamba_n_heads=128, mamba_d_head=64,
        mamba_n_groups=1, mamba_d_state=128, mamba_d_conv=4, mamba_expand=2,
        mamba_conv_bias=True, mamba_proj_bias=False, max_position_embeddings=4096,
        rms_norm_eps=1e-5, tie_word_embeddings=False), 1133),
    # Falcon-H1 (full size: the config class defaults, 4096 wide; tiny: `mamba_rms_norm`
    # on, so the mixer's gated norm is present)
    "falcon_h1": ("FalconH1Config", "FalconH1ForCausalLM", dict(
        TINY, mamba_n_heads=4, mamba_d_head=16, mamba_d_ssm=64, mamba_n_groups=1,
        mamba_d_state=4, mamba_d_conv=4, mamba_expand=2, mamba_rms_norm=True), dict(), 1134),
    # CohereForAI/c4ai-command-r-v01
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(TINY, tie_word_embeddings=True), dict(
        hidden_size=8192, intermediate_size=22528, num_hidden_layers=40,
        num_attention_heads=64, num_key_value_heads=64, vocab_size=256000,
        max_position_embeddings=8192, layer_norm_eps=1e-5, logit_scale=0.0625,
        tie_word_embeddings=True, use_qk_norm=False), 1112),
    # openai/gpt-oss-20b (bf16 layout: experts stacked on disk, gate/up interleaved)
    # Experts 32 wide: the MXFP4 alternative needs whole 32-element blocks on both dims.
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", dict(
        TINY, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
        sliding_window=16, tie_word_embeddings=False), dict(
        hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
        num_attention_heads=64, num_key_value_heads=8, head_dim=64, vocab_size=201088,
        max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False,
        num_local_experts=32, num_experts_per_tok=4, sliding_window=128,
        attention_bias=True), 1113),
    # deepseek-ai/DeepSeek-V3 (bf16 layout): MLA, first_k_dense_replace dense layers, shared experts
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM", dict(
        TINY, num_hidden_layers=3, moe_intermediate_size=16, n_routed_experts=4,
        num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, n_group=2,
        topk_group=1, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=4, v_head_dim=8, tie_word_embeddings=False), dict(
        hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128,
        vocab_size=129280, max_position_embeddings=163840, rms_norm_eps=1e-6,
        n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8,
        first_k_dense_replace=3, n_group=8, topk_group=4, q_lora_rank=1536,
        kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        tie_word_embeddings=False), 1114),
    # ibm-granite/granite-4.0-h-tiny: Mamba2 and attention layers by `layer_types`,
    # experts stacked on disk (`input_linear [E, 2I, H]`), a shared MLP in every layer
    "granitemoehybrid": ("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM", dict(
        TINY, num_hidden_layers=2, intermediate_size=16, num_local_experts=4,
        num_experts_per_tok=2, shared_intermediate_size=32,
        layer_types=["mamba", "attention"], mamba_n_heads=4, mamba_d_head=16,
        mamba_d_state=8, mamba_n_groups=1, mamba_d_conv=4, mamba_expand=2,
        tie_word_embeddings=True), dict(
        hidden_size=1536, intermediate_size=512, shared_intermediate_size=1024,
        num_hidden_layers=40, num_attention_heads=12, num_key_value_heads=4,
        vocab_size=100352, max_position_embeddings=131072, rms_norm_eps=1e-5,
        num_local_experts=64, num_experts_per_tok=6, mamba_n_heads=48, mamba_d_head=64,
        mamba_d_state=128, mamba_n_groups=1, mamba_d_conv=4, mamba_expand=2,
        layer_types=(["mamba"] * 5 + ["attention"] + ["mamba"] * 9 + ["attention"]
                     + ["mamba"] * 9 + ["attention"] + ["mamba"] * 9 + ["attention"]
                     + ["mamba"] * 4),
        tie_word_embeddings=True), 1115),
    # Qwen/Qwen3-Next-80B-A3B-Instruct: GatedDeltaNet linear attention in three layers of
    # four, gated full attention in the fourth (`full_attention_interval` 4 on the hub,
    # `layer_types` in transformers 5), a MoE with a gated shared expert; the tiny one is
    # dense in layer 1 (`mlp_only_layers`). Full size: the class defaults plus the hub's keys.
    "qwen3_next": ("Qwen3NextConfig", "Qwen3NextForCausalLM", dict(
        TINY_MOE, num_hidden_layers=4, shared_expert_intermediate_size=48,
        mlp_only_layers=[1], full_attention_interval=4, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
        linear_conv_kernel_dim=4, tie_word_embeddings=False), dict(
        hidden_size=2048, intermediate_size=5120, num_hidden_layers=48,
        num_attention_heads=16, num_key_value_heads=2, head_dim=256, vocab_size=151936,
        max_position_embeddings=262144, rms_norm_eps=1e-6, num_experts=512,
        num_experts_per_tok=10, moe_intermediate_size=512,
        shared_expert_intermediate_size=512, decoder_sparse_step=1, mlp_only_layers=[],
        full_attention_interval=4, linear_num_key_heads=16, linear_num_value_heads=32,
        linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
        tie_word_embeddings=False), 1135),
}


# Fixtures whose hub config.json names the layer kinds by another key than the one the
# config class saves: `config.hub.json` is config.json in the hub's form.
HUB_FORMS = {
    # The hub's Qwen3-Next configs say `full_attention_interval`, not `layer_types`.
    "qwen3_next": lambda cfg: {**{k: v for k, v in cfg.items() if k != "layer_types"},
                               "full_attention_interval": 4},
}


def tiny_kwargs(cls, kwargs):
    """Drops the keys a config class does not know (head_dim on older classes), so each
    fixture's config.json has its family's keys only."""
    known = set(cls().to_dict()) | ACCEPTED.get(cls.__name__, set())
    return {k: v for k, v in kwargs.items() if k in known}


# Keys a config class takes but does not save (it derives a saved key from them).
ACCEPTED = {"Qwen3NextConfig": {"full_attention_interval"}}


def make(name):
    cls_name, arch, tiny, full, seed = FAMILIES[name]
    cls = getattr(transformers, cls_name)
    cfg = cls(**tiny_kwargs(cls, tiny))
    cfg.architectures = [arch]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model = model.to(torch.bfloat16)
    out = HF / name
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)

    full_cfg = cls(**tiny_kwargs(cls, full))
    full_cfg.architectures = [arch]
    full_cfg.dtype = "bfloat16"
    with tempfile.TemporaryDirectory() as tmp:
        full_cfg.save_pretrained(tmp)
        shutil.copy(Path(tmp) / "config.json", out / "config.full.json")
    if name in HUB_FORMS:
        cfg_json = json.loads((out / "config.json").read_text())
        hub = HUB_FORMS[name](cfg_json)
        (out / "config.hub.json").write_text(json.dumps(hub, indent=2, sort_keys=True) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{name}: {arch}, {size} bytes")
    return {"class": cls_name, "architecture": arch, "seed": seed,
            "script": "scripts/make_fixtures.py",
            "transformers": transformers.__version__, "torch": torch.__version__}


def main():
    names = sys.argv[1:] or list(FAMILIES)
    prov = json.loads(PROVENANCE.read_text()) if PROVENANCE.exists() else {}
    for name in names:
        prov[name] = make(name)
    PROVENANCE.write_text(json.dumps(prov, indent=1) + "\n")


if __name__ == "__main__":
    main()
