"""The official `openai` client against a live server: models, chat, streaming, errors, API key."""

import base64

import openai
import pytest
from test_server_support import live_server, sample_images

from emovlm_kd.apps.server.app import create_app
from emovlm_kd.apps.server.config import ServerConfig
from emovlm_kd.run_folder import load_rgb

MODEL_ID = "emovlm-kd-tiny"
KEY = "test-key-123"


@pytest.fixture(scope="module")
def base_url(model):
    mp = pytest.MonkeyPatch()
    mp.setenv("EMOVLM_KD_TEST_API_KEY", KEY)
    app = create_app(model, ServerConfig(model_name=MODEL_ID, api_key_env="EMOVLM_KD_TEST_API_KEY"))
    mp.undo()
    with live_server(app) as base:
        yield base + "/v1"


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def image_file(sample_root):
    return sample_images(sample_root, 1)[0]


def messages(image_file, question="Describe how the emotion this image evokes can be inferred from its key elements."):
    url = "data:image/png;base64," + base64.b64encode(image_file.read_bytes()).decode()
    return [
        # As the annotation backend sends it: a system message (not shown to this model),
        # then the question and the image.
        {"role": "system", "content": "You are an expert annotator."},
        {"role": "user", "content": [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]},
    ]


def test_models_are_listed_and_retrieved(client):
    assert [m.id for m in client.models.list()] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).owned_by == "emovlm-kd"


def test_chat_answers_with_the_tuned_vlm_greedily(client, model, image_file):
    question = "Which emotion does this image evoke?"
    response = client.chat.completions.create(
        model=MODEL_ID, messages=messages(image_file, question), max_tokens=16, temperature=0.7
    )
    (choice,) = response.choices
    assert response.model == MODEL_ID and choice.message.role == "assistant"
    # The same greedy answer as the library gives for that image and question.
    expected = model.adapter.generate(model.adapter.encode([load_rgb(image_file)], [question]), max_new_tokens=16)[0]
    assert choice.message.content == expected
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens <= 16


def test_streaming_gives_the_same_text(client, image_file):
    plain = client.chat.completions.create(model=MODEL_ID, messages=messages(image_file), max_tokens=12)
    stream = client.chat.completions.create(model=MODEL_ID, messages=messages(image_file), max_tokens=12, stream=True)
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason


def test_errors_reach_the_client_as_its_own_exceptions(client, base_url, image_file):
    with pytest.raises(openai.BadRequestError, match="exactly one"):
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hello"}])
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=messages(image_file))
    url_message = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}}]}]
    with pytest.raises(openai.BadRequestError, match="--allow-url-images"):
        client.chat.completions.create(model=MODEL_ID, messages=url_message)
    stranger = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        stranger.models.list()
