"""Seeded Llama checkpoints for vLLM on CPU: every process that loads one gets the same weights.

Presets: "tiny" (2 layers, hidden 256; tests, ~1 s a turn) and "small" (~110M parameters,
12 layers, hidden 768, 4 KV heads; the bench, where a few thousand tokens of prefill cost
seconds on a CPU while reading their KV costs milliseconds).

Each checkpoint comes with a word-level tokenizer over its whole vocabulary (one word per token
id: "w<id>", a few role words and specials) and a chat template, so `vllm serve` can answer text
and chat requests without downloading one; token-id requests need none of it.
"""
from __future__ import annotations

import json
import os

PRESETS = {
    "tiny": dict(vocab_size=1000, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "small": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                  num_attention_heads=12, num_key_value_heads=4),
}


def write_llama(directory: str, preset: str = "tiny", seed: int = 0,
                max_positions: int = 8192) -> str:
    """Writes config.json + bf16 safetensors once; a second call with the same settings reuses it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    stamp = os.path.join(directory, "dualkv-preset.json")
    wanted = {"preset": preset, "seed": seed, "max_positions": max_positions, "tokenizer": 1}
    if os.path.exists(stamp) and json.load(open(stamp)) == wanted:
        return directory
    config = LlamaConfig(max_position_embeddings=max_positions, torch_dtype="bfloat16",
                         tie_word_embeddings=False, **PRESETS[preset])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger than HF's default init, so greedy outputs vary by context
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.06)
    model.to(torch.bfloat16).save_pretrained(directory)
    write_tokenizer(directory, config.vocab_size)
    with open(stamp, "w") as f:
        json.dump(wanted, f)
    return directory


SPECIALS = ["<unk>", "<s>", "</s>"]
ROLES = ["system", "user", "assistant"]
CHAT_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<s> assistant{% endif %}")


def word(token_id: int) -> str:
    """The text of a token id that is neither a special nor a role word."""
    return f"w{token_id}"


def write_tokenizer(directory: str, vocab_size: int) -> None:
    """tokenizer.json + tokenizer_config.json (with the chat template) for vocab_size ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + ROLES
    vocab = {w: i for i, w in enumerate(words)}
    vocab.update({word(i): i for i in range(len(words), vocab_size)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
