"""Loading targets and drafters: mlx-lm checkpoints by local path or Hugging Face id."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tokenizer_utils import TokenizerWrapper
from mlx_lm.utils import _download, _get_classes, load_model, load_tokenizer

from ..engine.cuda import build_quantized_kernels
from .checkpoint_sizes import SizeMismatch, check_sizes
from .quantize import quantize


class ModelLoadError(ValueError):
    """A checkpoint that cannot be used, with a message a person can act on."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: TokenizerWrapper
    path: Path
    config: dict


def parameter_count(model: nn.Module) -> int:
    """The model's parameters as trained: a quantized layer's packed weight counted
    unpacked, its scales and biases not at all."""
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    for _, module in model.named_modules():
        if hasattr(module, "bits"):
            packing = module.scales.size + (module["biases"].size if "biases" in module else 0)
            total += module.weight.size * (32 // module.bits - 1) - packing
    return total


def exists(path_or_id: str) -> bool:
    """Whether ``path_or_id`` names a local file or directory (a name no file system
    takes, too long, say, names none)."""
    try:
        return Path(path_or_id).expanduser().exists()
    except (OSError, ValueError):
        return False


def resolve(path_or_id: str) -> Path:
    """A local checkpoint directory for ``path_or_id``, downloading a Hugging Face id."""
    local = Path(path_or_id).expanduser()
    if exists(path_or_id):
        if not (local / "config.json").is_file():
            raise ModelLoadError(f"{local} is not a model directory (no config.json)")
        return local
    if path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1:
        raise ModelLoadError(f"model not found: {path_or_id}")
    try:
        return _download(path_or_id)
    except Exception as e:  # the hub raises many types; one line is what the user needs
        raise ModelLoadError(f"cannot fetch {path_or_id} from Hugging Face: {e}") from e


# Sizes exo-spec reads itself (placement, the MTP heads, the context): when a config
# gives one, it must be a non-negative integer.
SIZE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size",
             "max_position_embeddings", "num_nextn_predict_layers", "mtp_num_hidden_layers")
# A tokenizer needs at least one of these beside the weights (mlx-lm loads it with
# transformers' AutoTokenizer from the same directory).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt", "tiktoken.model", "spiece.model")
MAX_SAFETENSORS_HEADER = 100_000_000  # bytes: the safetensors format's own limit


def read_config(path: Path) -> dict:
    """``path``'s config.json, checked as far as exo-spec and mlx-lm rely on it: a JSON
    object with a ``model_type`` and integer sizes. ModelLoadError naming the file and
    what is wrong with it."""
    file = path / "config.json"
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError
        raise ModelLoadError(f"unreadable config {file}: {e}") from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"{file} must hold a JSON object, not {type(config).__name__}")
    text = config.get("text_config", config)
    if not isinstance(text, dict):
        raise ModelLoadError(f"{file}: text_config must be an object, not "
                             f"{type(text).__name__}")
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise ModelLoadError(f"{file} has no model_type" if "model_type" not in config else
                             f"{file}: model_type must be a string, got "
                             f"{config['model_type']!r}")
    for part, where in ((config, ""), (text, "text_config.")):
        for key in SIZE_KEYS:
            value = part.get(key, 0)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
                raise ModelLoadError(f"{file}: {where}{key} must be a non-negative integer, "
                                     f"got {value!r}")
        if text is config:
            break
    return config


def text_config(config: dict) -> dict:
    """The text model's part of a checkpoint's config (multimodal ones nest it)."""
    return config.get("text_config", config)


def context_length(config: dict) -> int:
    """The model's context in tokens, 0 when its config does not say."""
    return text_config(config).get("max_position_embeddings") or 0


def check_weights(path: Path) -> dict[str, list[int]]:
    """That ``path`` has weight files and that each is whole: a safetensors header that
    parses, and as many bytes as its tensors need (reads the headers only). Every
    tensor's shape, by name; ModelLoadError naming the file otherwise, as for a
    download cut short."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} has no weights (no *.safetensors file)")
    shapes: dict[str, list[int]] = {}
    for file in files:
        shapes.update(_check_safetensors(file))
    return shapes


def _check_safetensors(file: Path) -> dict[str, list[int]]:
    cut = "(an incomplete download?)"
    try:
        size = file.stat().st_size
        with file.open("rb") as f:
            length = int.from_bytes(f.read(8), "little")
            whole = size >= 8 and length <= MAX_SAFETENSORS_HEADER and 8 + length <= size
            raw = f.read(length) if whole else None
    except OSError as e:
        raise ModelLoadError(f"cannot read {file}: {e}") from None
    if size < 8 or length > MAX_SAFETENSORS_HEADER:
        raise ModelLoadError(f"{file} is not a safetensors file {cut}")
    if raw is None:
        raise ModelLoadError(f"{file} is truncated: {size} bytes, less than its "
                             f"{length}-byte header {cut}")
    try:
        header = json.loads(raw)
        tensors = {k: t for k, t in header.items() if k != "__metadata__"}
        end = max((int(t["data_offsets"][1]) for t in tensors.values()), default=0)
        shapes = {k: [int(d) for d in t["shape"]] for k, t in tensors.items()}
    except (ValueError, AttributeError, KeyError, IndexError, TypeError):
        raise ModelLoadError(f"{file} is not a safetensors file (its header is not one) "
                             f"{cut}") from None
    if 8 + length + end > size:
        raise ModelLoadError(f"{file} is truncated: {size} bytes, its tensors need "
                             f"{8 + length + end} {cut}")
    return shapes


def check_tokenizer(path: Path) -> None:
    """That ``path`` has tokenizer files; ModelLoadError naming what is missing."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES) \
            and not any(path.glob("*.tiktoken")):
        raise ModelLoadError(f"{path} has no tokenizer: none of {', '.join(TOKENIZER_FILES)} "
                             "or *.tiktoken is there")


def check_checkpoint(path: Path, *, tokenizer: bool = True) -> dict:
    """Everything about the checkpoint at ``path`` that can be checked without reading
    its tensors: its config (returned), its weight files, the config's sizes against
    their tensors' shapes (``checkpoint_sizes``) and (with ``tokenizer``) its tokenizer
    files."""
    config = read_config(path)
    try:
        check_sizes(path / "config.json", config, check_weights(path))
    except SizeMismatch as e:
        raise ModelLoadError(str(e)) from None
    if tokenizer:
        check_tokenizer(path)
    return config


def check_model_type(path: Path, config: dict) -> None:
    """That mlx-lm has a model for the config's model_type (no weights are read)."""
    if "model_file" in config:  # its own architecture: mlx-lm refuses to run it unasked
        return
    try:
        _get_classes(config)
    except ValueError as e:
        raise ModelLoadError(f"{path / 'config.json'}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0].strip() if lines else type(e).__name__


def _classes_without_mtp(config: dict):
    """mlx-lm's classes, with a sanitize that also drops DeepSeek-style MTP layers
    (``model.layers.{n >= num_hidden_layers}``), which mlx-lm only drops for n = 61."""
    model_class, args_class = _get_classes(config)
    if not config.get("num_nextn_predict_layers") or "text_config" in config:
        return model_class, args_class
    first = config["num_hidden_layers"]

    class WithoutMtp(model_class):
        def sanitize(self, weights):
            weights = {
                k: v for k, v in weights.items()
                if not (k.startswith("model.layers.") and int(k.split(".")[2]) >= first)
            }
            return super().sanitize(weights)

    return WithoutMtp, args_class


def load(path_or_id: str, *, lazy: bool = False, bits: int | None = None) -> LoadedModel:
    """``lazy`` leaves the weights unread until evaluated (pipeline ranks keep a share);
    ``bits`` quantizes the model as it loads (see ``quantize``)."""
    path = resolve(path_or_id)
    check_checkpoint(path)
    try:
        model, config = load_model(path, lazy=lazy, get_model_classes=_classes_without_mtp)
    except (ValueError, TypeError, KeyError, FileNotFoundError, RuntimeError) as e:
        # a config mlx-lm's model cannot be built from (RuntimeError: mx.load on a
        # weight file that is not what its header says)
        raise ModelLoadError(f"cannot load {path}: {type(e).__name__}: {_first_line(e)}") \
            from e
    tokenizer = tokenizer_of(path, config)
    if bits:
        quantize(model, bits)
        if not lazy:
            mx.eval(model.parameters())
    if not lazy:
        build_quantized_kernels(model)
    return LoadedModel(model, tokenizer, path, config)


def tokenizer_of(path: Path, config: dict) -> TokenizerWrapper:
    """The tokenizer of the checkpoint at ``path``, whose config is ``config``."""
    check_tokenizer(path)
    try:
        return load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    except Exception as e:  # transformers raises many types, over several lines
        raise ModelLoadError(f"cannot load the tokenizer of {path}: {_first_line(e)}") from e


def vocabulary(tokenizer: TokenizerWrapper) -> dict[str, int]:
    return tokenizer._tokenizer.get_vocab()


def check_same_vocabulary(target: LoadedModel, drafter: LoadedModel) -> None:
    """Refuse a drafter whose token ids do not mean what the target's mean."""
    t, d = vocabulary(target.tokenizer), vocabulary(drafter.tokenizer)
    if t != d:
        only_t = len(t.keys() - d.keys())
        only_d = len(d.keys() - t.keys())
        moved = sum(1 for k in t.keys() & d.keys() if t[k] != d[k])
        raise ModelLoadError(
            f"drafter {drafter.path} does not share the target's vocabulary: "
            f"target {target.path} has {len(t)} tokens, drafter has {len(d)} "
            f"({only_t} only in the target, {only_d} only in the drafter, {moved} with other ids)"
        )


def load_with_classes(path: Path, model_class: type, args_class: type) -> tuple[nn.Module, dict]:
    """The checkpoint at ``path`` as ``model_class`` (mlx-lm's loader: on-disk
    quantization is applied wherever ``.scales`` are stored)."""
    model, config = load_model(path, get_model_classes=lambda config: (model_class, args_class))
    model.eval()
    return model, config


def load_target_reader(path: Path, target: LoadedModel, model_class: type, args_class: type,
                       what: str, check_pair: Callable[[object, LoadedModel], None]
                       ) -> LoadedModel:
    """A drafter that reads ``target``'s embeddings, LM head and inner states (a Gemma 4
    assistant, a DFlash drafter), loaded as ``model_class`` and refused in one line
    unless ``check_pair(its args, target)`` accepts it. It may come without a
    tokenizer: it has the target's then, and with one of its own the same vocabulary."""
    check_checkpoint(path, tokenizer=False)  # its config and weight files, or one line
    try:
        model, config = load_with_classes(path, model_class, args_class)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise ModelLoadError(f"cannot load {what} {path}: {e}") from e
    check_pair(model.args, target)
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = load_tokenizer(path) if has_tokenizer else target.tokenizer
    loaded = LoadedModel(model, tokenizer, path, config)
    if has_tokenizer:
        check_same_vocabulary(target, loaded)
    return loaded
