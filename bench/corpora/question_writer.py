"""Rule-written or generator-written questions: which retrieve their section better?

    python bench/corpora/question_writer.py [--runs DIR] [--sample N] [shape ...]

For a seeded sample of each corpus's eval sections, the question data/qa_pairs derives
by rule is set beside one the local generator writes from the section's own text, with
a prompt that asks for one question the passage answers and names the page. A written
question is kept only when it passes the validation a derived question would need: one
line ending in "?", 4 to 40 words, at least one content word of the section, and not a
copy of the passage's opening. Both are then searched in the corpus run's own index
(bench/corpora/run.py must have run the shape: its promoted index and base model are
used) with the product's hybrid search; a hit is a top-5 chunk holding the answer's
opening, as in the retrieval gate. Rule questions are kept in the product unless the
generator's are better here.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = ("Write one question that the passage below answers. The question must name {title} and must be answerable from the "
          "passage alone. Reply with the question only.\n\nPage: {title}\nSection: {heading}\n\nPassage:\n{passage}")
STOP = {"the", "a", "an", "of", "to", "and", "or", "in", "on", "for", "is", "are", "be", "by", "with", "as", "at", "it", "this", "that"}


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z][a-z0-9_]+", text.lower()) if w not in STOP}


def valid(question: str, context: str, answer: str) -> str | None:
    """Why a written question is unusable, or None."""
    if "\n" in question.strip() or not question.strip().endswith("?"):
        return "not one question"
    n = len(question.split())
    if not 4 <= n <= 40:
        return "length"
    if not words(question) & words(context):
        return "off the passage"
    if question.lower().rstrip("?").strip() in answer.lower():
        return "copies the passage"
    return None


def write_questions(base_path: str, items: list[dict], max_new_tokens: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()
    out = []
    for start in range(0, len(items), 8):
        batch = items[start:start + 8]
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": PROMPT.format(
            title=i["title"], heading=i["heading"], passage=i["context"][:1200])}], tokenize=False, add_generation_prompt=True) for i in batch]
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        out += [tokenizer.decode(g[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for g in gen]
    return out


def one_shape(shape: str, args: argparse.Namespace) -> dict:
    from driftloop.data.corpus import read_directory
    from driftloop.data.qa import derive, normalized_question
    from driftloop.models.embedding import load_embedder
    from driftloop.retrieval.index import VectorIndex
    from driftloop.retrieval.quality import relevant_sets, retrieval_metrics

    home = args.runs / shape / "artifacts"
    pointer = home / "retrieval" / "index" / "current.json"
    if not pointer.is_file():
        raise SystemExit(f"question_writer: {shape} has no promoted index under {home}; run bench/corpora/run.py {shape} first")
    index = VectorIndex(home / "retrieval" / "index" / json.loads(pointer.read_text())["version"])
    base = next((p for p in (home / "base_models").iterdir() if (p / "config.json").is_file()), None)
    documents = read_directory(args.build / shape, 5_000_000).documents
    titles = {d.doc_id: d.title for d in documents}
    pairs = [p.to_row() for p in derive(documents).pairs if p.split == "eval"]
    random.Random(0).shuffle(pairs)
    items = [{**p, "title": titles[p["doc_id"]] or p["doc_id"]} for p in pairs[: args.sample]]
    written = write_questions(str(base), items, args.max_new_tokens)
    verdicts = [valid(q, i["context"], i["answer"]) for q, i in zip(written, items, strict=True)]
    embedder = load_embedder("all-MiniLM-L6-v2", "cpu", "auto")
    relevant, _ = relevant_sets(items, index.chunks)

    def recall(questions: list[str]) -> float:
        _, ids = index.search(embedder.encode(questions), 5, questions)
        return retrieval_metrics(ids, relevant, 5)["recall_at_5"]

    kept = [n for n, v in enumerate(verdicts) if v is None]
    # An invalid written question counts as a miss: the product could not use it.
    gen_questions = [written[n] if verdicts[n] is None else "" for n in range(len(items))]
    _, gen_ids = index.search(embedder.encode(gen_questions), 5, gen_questions)
    gen_ids[[n for n, v in enumerate(verdicts) if v is not None]] = -1
    reasons: dict[str, int] = {}
    for v in verdicts:
        if v:
            reasons[v] = reasons.get(v, 0) + 1
    return {
        "shape": shape, "sections": len(items), "valid": len(kept), "invalid": reasons,
        "distinct_written": len({normalized_question(written[n]) for n in kept}),
        "recall_at_5_rules": recall([i["question"] for i in items]),
        "recall_at_5_written": retrieval_metrics(gen_ids, relevant, 5)["recall_at_5"],
        "examples": [{"rule": i["question"], "written": q, "invalid": v} for i, q, v in list(zip(items, written, verdicts, strict=True))[:6]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", nargs="*", default=["reference", "tutorial"])
    parser.add_argument("--build", type=Path, default=HERE / "build")
    parser.add_argument("--runs", type=Path, default=HERE / "build" / "runs")
    parser.add_argument("--sample", type=int, default=48)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    args = parser.parse_args()
    results = [one_shape(s, args) for s in args.shapes]
    for r in results:
        print(json.dumps(r, indent=1))
    rules = sum(r["recall_at_5_rules"] * r["sections"] for r in results) / sum(r["sections"] for r in results)
    gen = sum(r["recall_at_5_written"] * r["sections"] for r in results) / sum(r["sections"] for r in results)
    print(f"RESULT recall_at_5={rules:.3f} baseline={gen:.3f} ratio={rules / gen if gen else float('inf'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
