"""Streams the same question twice through Tandem with the official SDKs, on
/v1/chat/completions (openai) and /v1/messages (anthropic): the first answer comes from the
upstream (x-tandem-cache: miss), the second is replayed from the response cache (hit). Both are
read by the SDKs' own stream parsers, which must see the same text and a complete stream.

Usage: python cache_replay.py http://127.0.0.1:PORT
"""

import sys

import anthropic
import openai


def openai_stream(client):
    with client.chat.completions.with_streaming_response.create(
        model="cached-gpt",
        temperature=0,
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Replay me"},
        ],
    ) as response:
        cache = response.headers.get("x-tandem-cache")
        text, finish, usage = "", None, None
        for chunk in response.parse():
            assert chunk.object == "chat.completion.chunk", chunk
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                text += choice.delta.content or ""
                finish = choice.finish_reason or finish
        return cache, text, finish, usage


def anthropic_stream(client):
    with client.messages.stream(
        model="cached-claude",
        # Passed as a body field: recent SDKs no longer name it on this helper.
        extra_body={"temperature": 0},
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Replay me"}],
    ) as stream:
        cache = stream.response.headers.get("x-tandem-cache")
        kinds = [event.type for event in stream]
        message = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert "content_block_start" in kinds and "message_delta" in kinds, kinds
    text = "".join(b.text for b in message.content if b.type == "text")
    return cache, text, message.stop_reason, message.usage


def check(name, run):
    first = run()
    second = run()
    assert first[0] == "miss", f"{name}: first answer was {first[0]}"
    assert second[0] == "hit", f"{name}: second answer was {second[0]}"
    assert first[1] and first[1] == second[1], f"{name}: {first[1]!r} != {second[1]!r}"
    assert first[2] == second[2] and first[2] is not None, f"{name}: {first[2]} != {second[2]}"
    assert second[3] is not None, f"{name}: the replay carries no usage"
    print(f"{name} ok: {second[1]!r} ({second[2]})")


def main():
    base = sys.argv[1]
    check("openai", lambda: openai_stream(openai.OpenAI(base_url=base + "/v1", api_key="test", max_retries=0)))
    check("anthropic", lambda: anthropic_stream(anthropic.Anthropic(base_url=base, api_key="test", max_retries=0)))


if __name__ == "__main__":
    main()
