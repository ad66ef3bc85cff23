from lowrank_compiler.app import data
from lowrank_compiler.app.pretrained import load_minilm


def test_corpus_size_split_and_lengths():
    lines = data.sentences()
    train, held = data.split()
    assert len(lines) >= 1000 and len(set(lines)) == len(lines)
    assert not set(train) & set(held) and len(train) + len(held) == len(lines)
    assert len(held) >= 256  # the job evaluates on 256 held-out sentences
    assert data.split() == (train, held)  # fixed
    _, tokenizer = load_minilm()
    tokens = [len(tokenizer(s)["input_ids"]) for s in lines]
    assert (
        min(tokens) >= 5 and max(tokens) <= 64
    )  # varied lengths, within the job's 64-token window
    assert sum(t > 32 for t in tokens) >= 0.1 * len(tokens)
