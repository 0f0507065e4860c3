"""Tiny Hugging Face checkpoints built here (no hub): a byte-level BPE tokenizer trained on the
packaged WikiText sample, and random models of each architecture saved with ``save_pretrained``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
HARD_STRINGS = [
    "Hello world", "   leading and  double  spaces\t\ttabs\n\nnewlines", "digits 1234567890 and 3.14159",
    "CJK 我想在apple工作 and 日本語のテキスト", "emoji 🚀🦙 ✅ 😶‍🌫️", "code: def f(x):\n    return x ** 2  # done",
    "<|im_start|>user\nhi<|im_end|>", "naïve café — “quotes” ’apostrophes’", "",
]


def write_tokenizer(folder: Path, vocab_size: int = 400) -> int:
    """A SmolLM2-style tokenizer (digits split, GPT-2 byte level); returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    import edgeslm

    text = (Path(edgeslm.__file__).parent / "data" / "wikitext-2-sample.txt").read_text(encoding="utf-8")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([text[i : i + 2000] for i in range(0, len(text), 2000)], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "add_bos_token": False,
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return int(tok.get_vocab_size())


def write_model(folder: Path, arch: str, vocab_size: int, **overrides: Any) -> Any:
    """A random model of ``arch`` (small dimensions, seeded), saved as safetensors in ``folder``."""
    import torch
    import transformers as tf

    kinds = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, {"head_dim": 32}),
        # llama.cpp scales Gemma 3's attention by 1/sqrt(head_dim): query_pre_attn_scalar must equal it
        "gemma3": (
            tf.Gemma3TextConfig,
            tf.Gemma3ForCausalLM,
            {"head_dim": 32, "query_pre_attn_scalar": 32, "sliding_window": 8, "vocab_size": vocab_size + 64},
        ),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, {"partial_rotary_factor": 0.75, "pad_token_id": 0}),
    }
    config_cls, model_cls, extra = kinds[arch]
    settings = {"vocab_size": vocab_size, **extra, **overrides}
    config = config_cls(**{
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "initializer_range": 0.2,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, **settings,
    })
    torch.manual_seed(0)
    model = model_cls(config).eval()
    model.save_pretrained(folder)
    return model


def write_sentencepiece(folder: Path, *, dummy_prefix: bool, vocab_size: int = 400) -> Any:
    """A SentencePiece BPE model with byte fallback (Llama 2 style with the dummy prefix, Gemma
    style without), as tokenizer.model; returns the loaded processor, the reference tokenizer."""
    import io

    import sentencepiece as spm

    import edgeslm

    text = (Path(edgeslm.__file__).parent / "data" / "wikitext-2-sample.txt").read_text(encoding="utf-8")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.splitlines()), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=dummy_prefix, user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        bos_id=1, eos_id=2, unk_id=0, pad_id=-1, character_coverage=1.0, minloglevel=2,
        remove_extra_whitespaces=False, split_digits=True, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",  # as Llama 2's and Gemma's: no NFKC, tabs and newlines kept
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    added = {str(sp.piece_to_id(t)): {"content": t, "special": True} for t in ("<|im_start|>", "<|im_end|>")}
    config = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False, "added_tokens_decoder": added}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return sp
