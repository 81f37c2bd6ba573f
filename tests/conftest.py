import os
import random
import signal
from pathlib import Path

import pytest

from driftloop.offline import enforce_offline

enforce_offline()

# A suite started as a background job inherits SIGINT ignored. Dagster gives SIGTERM the
# SIGINT disposition after each in-process run, so every compute-log `tail` it starts later
# ignores the SIGTERM that stops it, and each in-process run on a persistent instance then
# waits out Dagster's 30 s cleanup timeouts: a minute per run (the daemon storm test took
# 11 min instead of 35 s).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser):
    parser.addoption("--test-order", default="file", metavar="file|reverse|shuffle:SEED",
                     help="run the collected tests in file order (default), reversed, or shuffled by SEED, "
                          "to show that no test relies on another's side effects")


def pytest_collection_modifyitems(config, items):
    order = config.getoption("--test-order")
    if order == "reverse":
        items.reverse()
    elif order.startswith("shuffle:"):
        random.Random(order.split(":", 1)[1]).shuffle(items)
    elif order != "file":
        raise pytest.UsageError(f"--test-order must be file, reverse or shuffle:SEED, not {order!r}")


WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo "
    "sierra tango uniform victor whiskey xray yankee zulu river mountain valley ocean forest desert canyon meadow "
    "glacier island harbor bridge tower castle garden market village engine turbine sensor module kernel buffer "
    "socket thread packet router cipher ledger parser lexer token vector matrix tensor gradient optimizer"
).split()


def prose(rng: random.Random, sentences: int = 4) -> str:
    return " ".join(
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14))).capitalize() + "." for _ in range(sentences)
    )


def write_corpus(root: Path, n_docs: int = 16, seed: int = 0) -> Path:
    """A folder with one document per format family, each with headings and prose."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        kind = ("md", "rst", "txt", "html")[i % 4]
        title = f"Topic {i} {rng.choice(WORDS)}"
        sections = [(f"Part {j} of {title}", prose(rng)) for j in range(3)]
        if kind == "md":
            body = f"# {title}\n\n{prose(rng)}\n\n" + "\n\n".join(f"## {h}\n\n{p}" for h, p in sections)
        elif kind in {"rst", "txt"}:
            body = f"{title}\n{'=' * len(title)}\n\n{prose(rng)}\n\n" + "\n\n".join(f"{h}\n{'-' * len(h)}\n\n{p}" for h, p in sections)
        else:
            body = f"<html><head><title>x</title><style>p{{}}</style></head><body><h1>{title}</h1><p>{prose(rng)}</p>" + "".join(
                f"<h2>{h}</h2><p>{p}</p>" for h, p in sections
            ) + "</body></html>"
        (root / f"doc{i:02d}.{kind}").write_text(body, encoding="utf-8")
    return root


# One JSONL line per class of bad source data, each quarantined with its reason (sorted):
# duplicate, empty, not_utf8, pii (with pii_action quarantine), too_large (with
# max_file_bytes 10,000), wrong_fields twice (a field the schema lacks, a null text).
# The data stage run without an index: training examples are shown their own sections.
SECTION_CONTEXTS = {"data__instruction_dataset": {"config": {"contexts": "gold"}}}


def data_resources(dvc_store, **more) -> dict:
    from resources.models import ModelCatalog
    from resources.vector_store import VectorStore

    return {"dvc": dvc_store, "models": ModelCatalog(), "vector_store": VectorStore(), **more}


BAD_DATA_REASONS = ["duplicate", "empty", "not_utf8", "pii", "too_large", "wrong_fields", "wrong_fields"]


def bad_data_lines(duplicate_of: str) -> list[bytes]:
    import json

    return [
        json.dumps({"id": "schema", "body": "a field the schema does not have"}).encode(),
        json.dumps({"id": "nulls", "text": None}).encode(),
        json.dumps({"id": "empty", "text": "   "}).encode(),
        json.dumps({"id": "duplicate", "text": duplicate_of}).encode(),
        b'{"id": "latin1", "text": "caf\xe9 cr\xe8me"}',
        json.dumps({"id": "oversized", "text": "word " * 3000}).encode(),
        json.dumps({"id": "pii", "text": "# Contact\n\nWrite to jane.roe@acme.io or pay with 4111 1111 1111 1111 for the full report."}).encode(),
    ]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def dvc_store(tmp_path: Path):
    from resources.dvc import DvcStore

    return DvcStore(workspace_dir=str(tmp_path / "workspace"), remote_url=str(tmp_path / "remote"))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DRIFTLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DRIFTLOOP_SOURCE_DIR", raising=False)
    yield
    os.environ.pop("DAGSTER_HOME_TEST", None)


@pytest.fixture(scope="session")
def tiny_embedding_model(tmp_path_factory) -> str:
    """A random 2-layer BERT with the real MiniLM tokenizer: same interfaces, 1/100 the cost."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from driftloop.models.embedding import resolve_embedding_model

    real = resolve_embedding_model("all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(real)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=256))
    raw = tmp_path_factory.mktemp("tiny-bert-raw")
    bert.save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = models.Transformer(str(raw), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, models.Pooling(32, "mean")])
    out = tmp_path_factory.mktemp("tiny-st")
    model.save(str(out))
    return str(out)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A random 2-layer Llama with SmolLM2's real tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from driftloop.models.generator import PACKAGED_GGUF, packaged_gguf

    gguf = packaged_gguf(next(iter(PACKAGED_GGUF)))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def chat_examples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        word = rng.choice(WORDS)
        examples.append({
            "example_id": f"ex{i}",
            "messages": [
                {"role": "system", "content": "Answer from the context."},
                {"role": "user", "content": f"Context: the code word is {word}.\\n\\nQuestion: what is the code word?"},
                {"role": "assistant", "content": f"The code word is {word}."},
            ],
        })
    return examples


@pytest.fixture(scope="session")
def secured_service(tmp_path_factory, tiny_llama, tiny_embedding_model):
    """One real service for the security and fuzzing tests, started with a random API key,
    a random judge key and a known canary in its environment, so a test can look for all
    three anywhere the service writes; its index also holds the documents planted by the
    indirect prompt-injection cases of tests/data/injection_prompts.jsonl."""
    import json
    import secrets

    from serving_helpers import make_bundle, serve

    root = tmp_path_factory.mktemp("secured")
    planted = [json.loads(line) for line in (Path(__file__).parent / "data" / "injection_prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    planted = [row["text"] for row in planted if row["where"] == "document"]
    secrets_ = {"api_key": f"sk-dl-{secrets.token_hex(12)}", "judge_key": f"sk-judge-{secrets.token_hex(12)}",
                "canary": f"dl-canary-{secrets.token_hex(8)}"}
    env = {"DRIFTLOOP_API_KEY": secrets_["api_key"], "DRIFTLOOP_JUDGE_API_KEY": secrets_["judge_key"], "DRIFTLOOP_CANARY": secrets_["canary"],
           "DRIFTLOOP_WARMUP_REQUESTS": "2", "DRIFTLOOP_REQUEST_LOG": str(root / "requestlog")}
    with serve(root, make_bundle(root, tiny_llama, tiny_embedding_model, extra_texts=planted), env) as running:
        yield {**running, **secrets_, "request_log": root / "requestlog", "planted": planted}
