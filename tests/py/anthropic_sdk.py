"""The official `anthropic` SDK against Tandem: messages.count_tokens.

Usage: anthropic_sdk.py '<json spec>' with keys base_url (without /v1), model, and optionally
expect (the exact count). Prints the count. Exits non-zero on failure.
"""

import json
import sys

from anthropic import Anthropic


def main():
    spec = json.loads(sys.argv[1])
    client = Anthropic(base_url=spec["base_url"], api_key="sk-tandem-test", max_retries=0)
    count = client.messages.count_tokens(
        model=spec["model"],
        system="Answer briefly.",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert count.input_tokens > 0, count
    if "expect" in spec:
        assert count.input_tokens == spec["expect"], (count.input_tokens, spec["expect"])
    print(count.input_tokens)


if __name__ == "__main__":
    main()
