"""The OpenAI chat request as clients send it (driftloop/serving/chat.py): the whole
messages list, sampling settings, OpenAI's error codes, and the prompt trimmed to fit."""

import pytest

from driftloop.serving.chat import ChatError, Sampling, apply_stop, compose, parse_chat

MODELS = ["lora-abc", "driftloop"]
RAG = [{"role": "system", "content": "Answer from the context."}, {"role": "user", "content": "Context: ...\nQuestion: q3"}]


def chat(**body):
    return parse_chat({"model": "driftloop", "messages": [{"role": "user", "content": "hi"}], **body}, MODELS)


def test_system_messages_history_and_the_question_are_kept_apart():
    request = parse_chat({"model": "lora-abc", "messages": [
        {"role": "system", "content": "Reply only with the word BANANA."},
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "text", "text": "3"}]},
    ]}, MODELS)
    assert request.system == ("Reply only with the word BANANA.", "Be brief.")
    assert request.history == ({"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"})
    assert request.question == "q3" and request.sampling.greedy


def test_sampling_settings_and_their_bounds():
    request = chat(temperature=0.7, top_p=0.9, seed=7, stop="\n\n", max_completion_tokens=12, max_tokens=99,
                   stream=True, stream_options={"include_usage": True})
    assert request.sampling == Sampling(0.7, 0.9, 7, ("\n\n",)) and request.max_tokens == 12
    assert request.stream and request.include_usage
    # A seeded request is batched alone; unseeded ones sampled alike share a batch.
    assert request.sampling.key() != request.sampling.key()
    assert Sampling(0.7, 0.9).key() == Sampling(0.7, 0.9).key() != Sampling().key()
    for bad, code in [({"temperature": 2.5}, "invalid_temperature"), ({"top_p": 0}, "invalid_top_p"), ({"seed": 1.5}, "invalid_seed"),
                      ({"stop": ["a"] * 5}, "invalid_stop"), ({"max_tokens": 0}, "invalid_max_tokens"), ({"n": 2}, "invalid_n")]:
        with pytest.raises(ChatError) as err:
            chat(**bad)
        assert err.value.status == 400 and err.value.code == code, bad


def test_requests_openai_would_refuse_get_its_status_and_error_shape():
    with pytest.raises(ChatError) as err:
        parse_chat({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, MODELS)
    assert err.value.status == 404 and err.value.body()["error"]["code"] == "model_not_found"
    assert err.value.body()["error"]["type"] == "not_found_error" and "lora-abc" in err.value.message
    for messages in ([], [{"role": "assistant", "content": "a"}], [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                     [{"role": "tool", "content": "x"}], [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]):
        with pytest.raises(ChatError) as err:
            parse_chat({"model": "driftloop", "messages": messages}, MODELS)
        assert err.value.status == 400 and set(err.value.body()["error"]) == {"message", "type", "code", "param"}, messages


def words(turns):
    return sum(len(t["content"].split()) for t in turns)


def test_the_client_system_prompt_joins_ours_and_history_is_trimmed_oldest_first():
    history = [{"role": "user", "content": "old " * 20}, {"role": "assistant", "content": "old answer"},
               {"role": "user", "content": "recent"}, {"role": "assistant", "content": "recent answer"}]
    request = parse_chat({"model": "driftloop", "messages": [{"role": "system", "content": "Reply only with BANANA."}, *history,
                                                              {"role": "user", "content": "q3"}]}, MODELS)
    messages, dropped = compose(RAG, request, words, budget=1000)
    assert dropped == 0 and messages[0]["content"] == "Answer from the context.\n\nReply only with BANANA."
    assert messages[1:-1] == history and messages[-1] == RAG[-1]
    messages, dropped = compose(RAG, request, words, budget=20)
    # The oldest pair went first, whole; the newest turns and the grounded question stayed.
    assert dropped == 2 and messages[1:-1] == history[2:] and words(messages) <= 20


def test_a_question_that_cannot_fit_names_both_token_counts():
    with pytest.raises(ChatError) as err:
        compose(RAG, chat(), words, budget=5)
    assert err.value.status == 400 and err.value.code == "context_length_exceeded"
    assert f"needs {words(RAG)} tokens" in err.value.message and "budget is 5" in err.value.message


def test_stop_sequences_cut_the_answer_before_the_first_one():
    assert apply_stop("one. two. END three END", ["END", "two"]) == ("one. ", True)
    assert apply_stop("no stop here", ["END"]) == ("no stop here", False)


def test_embedding_requests_take_a_string_or_a_list_and_refuse_the_rest():
    from driftloop.serving.chat import parse_embeddings

    assert parse_embeddings({"model": "m", "input": "x"}, ["m"]).inputs == ("x",)
    assert parse_embeddings({"model": "m", "input": ["a", "b"], "encoding_format": "base64"}, ["m"]).base64
    for body, code in [({"model": "n", "input": "x"}, "model_not_found"), ({"model": "m", "input": [1, 2]}, "invalid_input"),
                       ({"model": "m", "input": "x", "encoding_format": "int8"}, "invalid_encoding_format"),
                       ({"model": "m", "input": "x", "dimensions": 8}, "invalid_dimensions")]:
        with pytest.raises(ChatError) as err:
            parse_embeddings(body, ["m"])
        assert err.value.code == code, body
