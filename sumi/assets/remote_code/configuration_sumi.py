"""Sumi's config for ``transformers`` remote code (``trust_remote_code=True``): needs only transformers.

Written next to every model sumi saves, with ``auto_map`` in config.json, so the directory works where sumi is
not installed. Keys and defaults are the released Sumi-7B's config.json.
"""

from transformers import PretrainedConfig


class SumiConfig(PretrainedConfig):
    model_type = "sumi"

    def __init__(self, vocab_size=100278, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                 num_attention_heads=32, num_key_value_heads=8, head_dim=128, hidden_act="silu",
                 max_position_embeddings=4864, rms_norm_eps=1e-5, rope_parameters=None, attention_bias=False,
                 add_qkv_bias=False, mlp_bias=False, attention_dropout=0.0, tie_word_embeddings=False,
                 bos_token_id=100256, eos_token_id=100257, pad_token_id=100277, initializer_range=0.02,
                 pretraining_tp=1, use_cache=True, uniform_diffusion_beta_is=1.0,
                 uniform_diffusion_z_loss_strength=1e-5, is_causal=False, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim if head_dim is not None else hidden_size // num_attention_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_parameters = rope_parameters or {"rope_theta": 500000.0, "rope_type": "default"}
        self.attention_bias = attention_bias
        self.add_qkv_bias = add_qkv_bias
        self.mlp_bias = mlp_bias
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.pretraining_tp = pretraining_tp
        self.use_cache = use_cache
        self.uniform_diffusion_beta_is = uniform_diffusion_beta_is
        self.uniform_diffusion_z_loss_strength = uniform_diffusion_z_loss_strength
        self.is_causal = is_causal
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
