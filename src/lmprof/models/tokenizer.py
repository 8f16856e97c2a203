"""The tokenizer of the random-weight built-in models, built offline and deterministically.

A byte-level BPE (the scheme of GPT-2, Llama 3, Qwen2 and SmolLM2) is trained on the small
embedded corpus, then its vocabulary is padded to the model's embedding size with pseudo-words
that no merge produces. Padding, rather than `suppress_tokens` in the generation config, is how
a random model's output stays decodable: a random model emits any id it has an embedding for,
and suppressing 127k ids costs about 10 ms per decode step on CPU (measured with transformers
5.24), which would show up in every profile of these models, and a hand-written decode loop
would not honour it anyway. Encoding text only ever yields the trained tokens.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from lmprof.models.tokenizer_corpus import TOKENIZER_CORPUS

# Bump when the corpus, the trainer settings, the special tokens or the padding scheme change.
TOKENIZER_RECIPE_VERSION = 2

# GPT-2/Qwen's name: transformers loads qwen2 folders with Qwen2Tokenizer, whose unk token
# defaults to "<|endoftext|>" and would otherwise be appended past the model's vocabulary.
PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)  # ids 0, 1, 2 in this order
PAD_TOKEN_ID, BOS_TOKEN_ID, EOS_TOKEN_ID = range(len(SPECIAL_TOKENS))

# Reachable with min_frequency=2 on the embedded corpus (it tops out at 641).
TRAINED_VOCAB_SIZE = 512

# ChatML-style, so chat-formatted prompts work on the random models as on the real one.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|begin_of_text|>' + message['role'] + '\\n' + message['content']"
    " + '<|end_of_text|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|begin_of_text|>assistant\\n' }}{% endif %}"
)

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_BYTE_LEVEL_SPACE = "\u0120"  # how the byte-level alphabet spells a leading space ("Ġ")


def _pseudo_words() -> Iterator[str]:
    """Space-prefixed syllable words ("Ġba", "Ġbabe", ...): readable when decoded, 348k of them."""
    syllables = [c + v for c in _CONSONANTS for v in _VOWELS]
    for length in itertools.count(1):
        for parts in itertools.product(syllables, repeat=length):
            yield _BYTE_LEVEL_SPACE + "".join(parts)


def _train_byte_level_bpe() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([TOKENIZER_CORPUS], trainer=trainer)
    if tokenizer.get_vocab_size() != TRAINED_VOCAB_SIZE:
        raise RuntimeError(
            f"tokenizer training gave {tokenizer.get_vocab_size()} tokens, expected {TRAINED_VOCAB_SIZE}"
        )
    return tokenizer


def _pad_vocabulary(tokenizer: Tokenizer, vocab_size: int) -> Tokenizer:
    """Extend the BPE vocabulary to `vocab_size` ids with pseudo-words no merge can produce."""
    spec = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    words = (word for word in _pseudo_words() if word not in vocab)
    for token_id in range(len(vocab), vocab_size):
        vocab[next(words)] = token_id
    return Tokenizer.from_str(json.dumps(spec))


def build_tokenizer(
    vocab_size: int = TRAINED_VOCAB_SIZE, *, model_max_length: int = 2048
) -> PreTrainedTokenizerFast:
    """A fast tokenizer with exactly `vocab_size` ids (>= TRAINED_VOCAB_SIZE); same bytes every call."""
    if vocab_size < TRAINED_VOCAB_SIZE:
        raise ValueError(f"vocab_size {vocab_size} is below the trained size {TRAINED_VOCAB_SIZE}")
    tokenizer = _pad_vocabulary(_train_byte_level_bpe(), vocab_size)
    # Llama-style: every encoded sequence starts with the bos token.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, BOS_TOKEN_ID)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
    )
