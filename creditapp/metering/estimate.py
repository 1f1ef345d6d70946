"""Token counts without a tokenizer download (this service runs with no network).

Two numbers, for two jobs:
- `upper_bound_tokens` sizes holds. A byte-level BPE token is at least one UTF-8 byte of
  ordinary text, so the byte count never undercounts it; a few tokens per message cover the
  chat format's role and separator tokens.
- `estimate_tokens` stands in for usage a provider did not report: about four bytes of text per
  token, the usual figure for English under the providers' tokenizers, rounded up.
"""

from __future__ import annotations

from collections.abc import Iterable

MESSAGE_OVERHEAD_TOKENS = 8
BYTES_PER_TOKEN = 4


def upper_bound_tokens(texts: Iterable[str]) -> int:
    return sum(len(text.encode("utf-8")) + MESSAGE_OVERHEAD_TOKENS for text in texts)


def estimate_tokens(texts: Iterable[str]) -> int:
    return sum(
        -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN) + (MESSAGE_OVERHEAD_TOKENS // 2)
        for text in texts
    )
