"""The official `openai` SDK against Tandem: the Responses API (whole, streamed, a function-tool
round trip, previous_response_id, retrieve, input items, delete) and embeddings.

Usage: openai_sdk.py '<json spec>' with keys base_url, model, and optionally tool_model (a model
that answers with a function call), embedding_model, embedding_dims, stored (whether Tandem
stores the responses: false for OpenAI's own API passed through), kept_upstream (the upstream
keeps them: retrieved, listed and deleted through Tandem). Exits non-zero on failure.
"""

import json
import sys

from openai import OpenAI

RESPONSE_END = {"response.completed", "response.incomplete"}


def check_stream(client, model):
    events = []
    with client.responses.create(
        model=model, input="Say hello in one word.", max_output_tokens=16, stream=True
    ) as stream:
        for event in stream:
            events.append(event)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created", kinds
    assert kinds[1] == "response.in_progress", kinds
    assert kinds[-1] in RESPONSE_END, kinds
    assert "response.output_text.delta" in kinds, kinds
    assert [e.sequence_number for e in events] == list(range(len(events))), kinds
    done = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert done.output_text == text, (done.output_text, text)
    assert done.usage.input_tokens > 0 and done.usage.output_tokens > 0, done.usage
    return done


def main():
    spec = json.loads(sys.argv[1])
    client = OpenAI(base_url=spec["base_url"], api_key="sk-tandem-test", max_retries=0)
    model = spec["model"]
    stored = spec.get("stored", True)

    first = client.responses.create(
        model=model,
        instructions="Answer briefly.",
        input="What is the capital of France?",
        max_output_tokens=16,
    )
    assert first.object == "response", first
    assert first.status in ("completed", "incomplete"), first
    assert first.output_text, first
    assert first.usage.input_tokens > 0, first.usage
    assert first.usage.input_tokens_details.cached_tokens >= 0

    check_stream(client, model)

    if stored:
        second = client.responses.create(
            model=model, previous_response_id=first.id, input="And of Italy?", max_output_tokens=16
        )
        assert second.previous_response_id == first.id, second
        assert second.output_text, second
        got = client.responses.retrieve(first.id)
        assert got.id == first.id and got.output_text == first.output_text, got
        # The whole conversation, newest first: this turn, the first answer, the first turn.
        items = client.responses.input_items.list(second.id)
        assert [(i.type, i.role) for i in items.data] == [
            ("message", "user"),
            ("message", "assistant"),
            ("message", "user"),
        ], items
        assert items.data[0].content[0].text == "And of Italy?", items
        assert items.data[1].id == first.output[0].id, items
        oldest = client.responses.input_items.list(second.id, order="asc", limit=1)
        assert oldest.data[0].content[0].text == "What is the capital of France?", oldest
        assert oldest.has_more, oldest
        client.responses.delete(second.id)
        try:
            client.responses.retrieve(second.id)
            raise AssertionError("a deleted response is still there")
        except Exception as e:  # openai.NotFoundError
            assert getattr(e, "status_code", None) == 404, e

    if spec.get("kept_upstream"):
        # OpenAI's own API keeps it: read, listed and deleted there through Tandem.
        got = client.responses.retrieve(first.id)
        assert got.id == first.id, got
        items = client.responses.input_items.list(first.id)
        assert items.data and items.data[0].type == "message", items
        deleted = client.responses.delete(first.id)
        assert deleted is None or getattr(deleted, "deleted", True), deleted
        try:
            client.responses.retrieve(first.id)
            raise AssertionError("a deleted response is still there")
        except Exception as e:  # openai.NotFoundError
            assert getattr(e, "status_code", None) == 404, e

    tool_model = spec.get("tool_model")
    if tool_model:
        tools = [{
            "type": "function",
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]},
        }]
        asked = client.responses.create(
            model=tool_model, input="What is the weather in Paris?", tools=tools
        )
        calls = [o for o in asked.output if o.type == "function_call"]
        assert calls, asked
        json.loads(calls[0].arguments)
        answered = client.responses.create(
            model=model,
            previous_response_id=asked.id,
            tools=tools,
            input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                    "output": json.dumps({"weather": "sunny"})}],
        )
        assert answered.output_text, answered

    embedding_model = spec.get("embedding_model")
    if embedding_model:
        # The SDK asks for base64 by default and decodes it.
        out = client.embeddings.create(model=embedding_model, input=["hello", "world", "again"])
        assert [d.index for d in out.data] == [0, 1, 2], out
        dims = spec.get("embedding_dims")
        assert all(len(d.embedding) == dims for d in out.data), [len(d.embedding) for d in out.data]
        floats = client.embeddings.create(
            model=embedding_model, input="hello", encoding_format="float"
        )
        a, b = out.data[0].embedding, floats.data[0].embedding
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
        assert out.usage.prompt_tokens > 0, out.usage
    print("ok")


if __name__ == "__main__":
    main()
