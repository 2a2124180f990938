"""Small random-weight checkpoints in real mlx-lm architectures, written with fixed seeds.

Tests and benchmarks build their models here instead of downloading them. Every
checkpoint is an ordinary directory (config.json, model.safetensors, tokenizer
files) that ``mlx_lm.load`` opens. The tokenizer is a byte-level BPE trained on
Python standard-library sources, which every machine running exo-spec has.

Checkpoints with MTP weights are written in the layout their publishers ship:
Qwen3.5 as the Hugging Face checkpoint (``model.language_model.*``, ``mtp.*``,
norm weights stored as offsets from one, conv1d as (C, 1, K)), DeepSeek-V3 with
its MTP block as ``model.layers.{num_hidden_layers}.*``.
"""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map

EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS_MODULES = ["textwrap", "string", "heapq", "bisect", "functools", "queue", "shlex"]


def corpus_text() -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return "\n".join((stdlib / f"{name}.py").read_text() for name in CORPUS_MODULES)


def write_tokenizer(out: Path, vocab_size: int = 512, text: str | None = None) -> None:
    """Train a byte-level BPE tokenizer on ``text`` (by default the stdlib corpus
    above) and save it in HF format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((text or corpus_text()).splitlines(keepends=True), trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "bos_token": None,
        "pad_token": EOS,
        "model_max_length": 4096,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _token_id(tokenizer_dir: Path, token: str) -> int:
    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    return vocab[token]


def _vocab_size(tokenizer_dir: Path) -> int:
    data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    return len(data["model"]["vocab"]) + sum(
        1 for t in data.get("added_tokens", []) if t["content"] not in data["model"]["vocab"]
    )


def _random_params(module: nn.Module, seed: int, norm_jitter: float = 0.1) -> dict:
    """Seeded parameters for ``module``; norm weights get jitter so offset conventions matter."""
    mx.random.seed(seed)
    params = tree_map(lambda p: mx.random.normal(p.shape) * 0.02, module.parameters())
    module.update(params)
    flat = dict(tree_flatten(module.parameters()))
    for name, value in flat.items():
        if "norm" in name and value.ndim == 1:
            flat[name] = 1.0 + norm_jitter * mx.random.normal(value.shape)
        elif name.endswith("embed_tokens.weight"):
            flat[name] = mx.random.normal(value.shape) * 0.5
        elif name.endswith(("A_log", "dt_bias")):
            flat[name] = mx.random.uniform(-1.0, 1.0, value.shape)
    return flat


def _save(out: Path, config: dict, weights: dict, tokenizer_dir: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((tokenizer_dir / name).read_bytes())
    return out


def write_llama(
    out: Path,
    tokenizer_dir: Path,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    tie_word_embeddings: bool = False,
    seed: int = 0,
) -> Path:
    """A dense Llama-architecture checkpoint."""
    from mlx_lm.models import llama

    config = {
        "model_type": "llama",
        "hidden_size": hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "intermediate_size": intermediate_size,
        "vocab_size": _vocab_size(tokenizer_dir),
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": tie_word_embeddings,
        "eos_token_id": _token_id(tokenizer_dir, EOS),
    }
    model = llama.Model(llama.ModelArgs.from_dict(config))
    return _save(out, config, _random_params(model, seed), tokenizer_dir)


def qwen3_5_text_config(
    tokenizer_dir: Path,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 4,
    full_attention_interval: int = 2,
    mtp_num_hidden_layers: int = 1,
) -> dict:
    return {
        "model_type": "qwen3_5_text",
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": hidden_size // 4,
        "linear_num_value_heads": 4,
        "linear_num_key_heads": 2,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_conv_kernel_dim": 4,
        "full_attention_interval": full_attention_interval,
        "rms_norm_eps": 1e-6,
        "vocab_size": _vocab_size(tokenizer_dir),
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "mtp_num_hidden_layers": mtp_num_hidden_layers,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.25,
            "mrope_section": [2, 1, 1],
        },
        "eos_token_id": _token_id(tokenizer_dir, EOS),
    }


def write_qwen3_5(out: Path, tokenizer_dir: Path, *, seed: int = 0, **text_config) -> Path:
    """A hybrid Qwen3.5 checkpoint (GatedDeltaNet + full attention) with MTP weights,
    in the on-disk layout of the published Hugging Face checkpoints."""
    from mlx_lm.models import qwen3_5

    from .mtp import Qwen35Mtp

    text = qwen3_5_text_config(tokenizer_dir, **text_config)
    config = {
        "model_type": "qwen3_5",
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "text_config": text,
        "tie_word_embeddings": False,
        "eos_token_id": text["eos_token_id"],
    }
    model = qwen3_5.Model(qwen3_5.ModelArgs.from_dict(config))
    weights = {}
    for name, value in _random_params(model, seed).items():
        if name.startswith("language_model.model."):
            name = "model.language_model." + name.removeprefix("language_model.model.")
        elif name.startswith("language_model."):
            name = name.removeprefix("language_model.")
        weights[name] = value
    mtp = Qwen35Mtp(model.language_model.args, text["mtp_num_hidden_layers"])
    for name, value in _random_params(mtp, seed + 1).items():
        weights["mtp." + name] = value
    return _save(out, config, _to_hf_qwen3_5(weights), tokenizer_dir)


def _to_hf_qwen3_5(weights: dict) -> dict:
    """Undo mlx-lm's Qwen3.5 sanitize: (C, K, 1) conv1d -> (C, 1, K), norms -> offsets."""
    hf = {}
    for name, value in weights.items():
        if name.endswith("conv1d.weight"):
            value = value.moveaxis(1, 2)
        elif "linear_attn.norm" not in name and name.endswith("norm.weight"):
            value = value - 1.0
        hf[name] = value
    return hf


def write_deepseek_v3(out: Path, tokenizer_dir: Path, *, seed: int = 0) -> Path:
    """A DeepSeek-V3 checkpoint (MLA + MoE) whose MTP block is stored as the layer
    past ``num_hidden_layers``, as the published checkpoints store it."""
    from mlx_lm.models import deepseek_v3

    from .mtp import DeepseekMtp

    config = {
        "model_type": "deepseek_v3",
        "vocab_size": _vocab_size(tokenizer_dir),
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_nextn_predict_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_shared_experts": 1,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "n_group": 1,
        "topk_group": 1,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "kv_lora_rank": 32,
        "q_lora_rank": 48,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 16,
        "v_head_dim": 16,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "eos_token_id": _token_id(tokenizer_dir, EOS),
    }
    args = deepseek_v3.ModelArgs.from_dict(config)
    model = deepseek_v3.Model(args)
    weights = _random_params(model, seed)
    weights = _unstack_deepseek_experts(weights, args)
    mtp = DeepseekMtp(args, config["num_nextn_predict_layers"])
    for name, value in _random_params(mtp, seed + 1).items():
        index, rest = name.removeprefix("layers.").split(".", 1)
        layer = args.num_hidden_layers + int(index)
        weights[f"model.layers.{layer}.{rest}"] = value
    return _save(out, config, _unstack_deepseek_experts(weights, args), tokenizer_dir)


def _unstack_deepseek_experts(weights: dict, args) -> dict:
    """mlx-lm stacks experts into ``switch_mlp``; checkpoints store one tensor per expert.
    MLA's embed_q/unembed_out are folded back into ``kv_b_proj``."""
    out = {}
    for name, value in weights.items():
        if ".mlp.switch_mlp." in name:
            prefix, proj = name.split(".mlp.switch_mlp.")
            proj, kind = proj.split(".")
            for e in range(value.shape[0]):
                out[f"{prefix}.mlp.experts.{e}.{proj}.{kind}"] = value[e]
        elif name.endswith("self_attn.embed_q.weight"):
            prefix = name.removesuffix("embed_q.weight")
            wk = value.swapaxes(-1, -2)  # (heads, nope, rank)
            wv = weights[prefix + "unembed_out.weight"]  # (heads, v, rank)
            kv_b = mx.concatenate([wk, wv], axis=1)
            out[prefix + "kv_b_proj.weight"] = kv_b.reshape(-1, kv_b.shape[-1])
        elif name.endswith("self_attn.unembed_out.weight"):
            continue
        else:
            out[name] = value
    return out


def write_perturbed(src: Path, dst: Path, scale: float, seed: int) -> Path:
    """A copy of the checkpoint ``src`` with seeded noise on every weight: a drafter
    that agrees with it often but not always."""
    shutil.copytree(src, dst)
    weights = mx.load(str(dst / "model.safetensors"))
    mx.random.seed(seed)
    noisy = {k: v + scale * mx.random.normal(v.shape, v.dtype) for k, v in weights.items()}
    mx.save_safetensors(str(dst / "model.safetensors"), noisy, metadata={"format": "mlx"})
    return dst
