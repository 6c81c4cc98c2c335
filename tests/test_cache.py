"""The embedding cache: hit/miss accounting, appends, corruption, kill-and-resume, 2 processes."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_models import WORDS, make_tiny_bert
import era_adapters.cache as cache_module
from era_adapters.cache import CorruptShardError, EmbeddingCache, embed_queries, embed_texts, ensure_embedded
from era_adapters.encoders import TextEncoder

REPO = Path(__file__).resolve().parents[1]


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{i} " + " ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for i in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


class Spy:
    """Wraps `encoder.encode` to record which texts were actually embedded."""

    def __init__(self, encoder: TextEncoder) -> None:
        self.calls: list[list[str]] = []
        self._encode = encoder.encode
        encoder.encode = self

    def __call__(self, texts, **kwargs):
        self.calls.append(list(texts))
        return self._encode(texts, **kwargs)

    @property
    def texts(self) -> list[str]:
        return [t for call in self.calls for t in call]


def test_hits_misses_and_appending_encode_only_new_texts(tiny, tmp_path):
    encoder = TextEncoder(tiny, cache_dir=tmp_path)
    spy = Spy(encoder)
    texts = make_texts(50)
    first = embed_texts(encoder, texts + texts[:5], shard_size=16)  # duplicates are embedded once
    cache = EmbeddingCache.for_encoder(encoder)
    stats = ensure_embedded(encoder, texts, cache)
    assert stats.cached == 50 and stats.encoded == 0 and stats.shards_written == 0
    assert sorted(spy.texts) == sorted(texts) and len(spy.calls) == 4  # 16 + 16 + 16 + 2
    np.testing.assert_array_equal(first[50:], first[:5])
    np.testing.assert_allclose(first[:50], encoder.encode(texts), atol=1e-6)  # what the model gives

    spy.calls.clear()
    added = make_texts(20, seed=1)
    both = embed_texts(encoder, texts + added, cache=cache, shard_size=16)
    assert sorted(spy.texts) == sorted(added)
    assert (cache.last_stats.cached, cache.last_stats.encoded, cache.last_stats.shards_written) == (50, 20, 2)
    np.testing.assert_array_equal(both[:50], first[:50])  # cached vectors are returned as they were
    spy.calls.clear()
    again = embed_texts(encoder, list(reversed(texts + added)), cache=cache)
    assert spy.calls == [] and cache.last_stats.cached == 70
    np.testing.assert_array_equal(again, both[::-1])
    assert len(cache) == 70 and cache.dim == 32


def test_prompted_queries_are_separate_entries(tiny, tmp_path):
    encoder = TextEncoder(tiny, cache_dir=tmp_path)
    cache = EmbeddingCache.for_encoder(encoder)
    plain = embed_queries(encoder, ["find code"], cache=cache)
    with_instruction = embed_queries(encoder, ["find code"], "retrieve the function", cache=cache)
    assert cache.last_stats.encoded == 1 and len(cache) == 2
    assert not np.array_equal(plain, with_instruction)
    assert cache.contains(["retrieve the function find code", "find code", "other"]).tolist() == [True, True, False]


def test_reads_in_chunks_and_to_one_npy(tiny, tmp_path):
    encoder = TextEncoder(tiny, cache_dir=tmp_path)
    texts = make_texts(45)
    cache = EmbeddingCache.for_encoder(encoder)
    full = embed_texts(encoder, texts, cache=cache, shard_size=10)
    chunks = list(cache.iter_chunks(texts[::-1], chunk_size=7))
    assert [len(c) for c in chunks] == [7] * 6 + [3]
    np.testing.assert_array_equal(np.concatenate(chunks), full[::-1])
    on_disk = cache.write_npy(texts, tmp_path / "corpus.npy", chunk_size=8)
    assert isinstance(on_disk, np.memmap) and on_disk.dtype == np.float32
    np.testing.assert_array_equal(on_disk, full)
    with pytest.raises(KeyError, match="not in the cache"):
        cache.get(texts + ["never embedded"])
    assert cache.get([]).shape == (0, 32) and embed_texts(encoder, [], cache=cache).shape == (0, 32)


def test_a_corrupt_or_truncated_or_missing_shard_is_recomputed_never_read(tiny, tmp_path):
    encoder = TextEncoder(tiny, cache_dir=tmp_path)
    texts = make_texts(40)
    cache = EmbeddingCache.for_encoder(encoder)
    reference = embed_texts(encoder, texts, cache=cache, shard_size=10)
    shards = sorted(cache.shards_dir.glob("*.npy"))
    assert len(shards) == 4 and len(list(cache.manifests_dir.glob("*.json"))) == 4

    flipped = bytearray(shards[0].read_bytes())
    flipped[-5] ^= 0x01  # same size, one bit of one float changed: only the checksum can tell
    shards[0].write_bytes(bytes(flipped))
    fresh = EmbeddingCache.for_encoder(encoder)
    with pytest.raises(CorruptShardError):
        fresh.get(texts)
    spy = Spy(encoder)
    again = embed_texts(encoder, texts, cache=fresh, shard_size=10)
    assert fresh.last_stats.corrupt_shards == 1 and fresh.last_stats.encoded == 10 and len(spy.texts) == 10
    np.testing.assert_array_equal(again, reference)  # the same shard, recomputed bit-identically

    shards = sorted(fresh.shards_dir.glob("*.npy"))
    shards[1].write_bytes(shards[1].read_bytes()[:-100])  # truncated
    shards[2].unlink()  # missing
    (fresh.shards_dir / ".x.npy.tmp-1-dead").write_bytes(b"partial")  # leftovers of a killed writer
    (fresh.manifests_dir / ".y.json.tmp-1-dead").write_bytes(b"{")
    spy.calls.clear()
    again = embed_texts(encoder, texts, cache=EmbeddingCache.for_encoder(encoder), shard_size=10)
    assert len(spy.texts) == 20
    np.testing.assert_array_equal(again, reference)
    assert len(list(fresh.manifests_dir.glob("*.json"))) == 4  # the broken ones were replaced, not duplicated
    orphan = fresh.shards_dir / "0123.abcd.npy"
    orphan.write_bytes(b"not referenced by any manifest")
    assert fresh.prune(min_age_s=0) == 3  # the orphan and both temp leftovers
    assert len(list(fresh.shards_dir.iterdir())) == 4
    np.testing.assert_array_equal(EmbeddingCache.for_encoder(encoder).get(texts), reference)


def test_cache_folder_is_bound_to_its_encoder(tiny, tmp_path):
    encoder = TextEncoder(tiny, cache_dir=tmp_path)
    other = TextEncoder(tiny, pooling="cls", cache_dir=tmp_path)
    assert EmbeddingCache.for_encoder(encoder).directory != EmbeddingCache.for_encoder(other).directory
    with pytest.raises(ValueError, match="another encoder"):
        EmbeddingCache(EmbeddingCache.for_encoder(encoder).directory, other.identity)
    with pytest.raises(ValueError, match="belongs to"):
        ensure_embedded(other, ["x"], EmbeddingCache.for_encoder(encoder))


class ThreadRank:
    """An accelerator stand-in: ranks are threads, the barrier a threading.Barrier (protocol test)."""

    def __init__(self, rank: int, barrier: threading.Barrier) -> None:
        self.process_index, self.num_processes, self.is_main_process = rank, barrier.parties, rank == 0
        self.device, self._barrier = torch.device("cpu"), barrier

    def wait_for_everyone(self) -> None:
        self._barrier.wait(timeout=60)


def _run_ranks(encoder: TextEncoder, texts: list[str], world: int = 2) -> list:
    barrier, results = threading.Barrier(world), [None] * world

    def rank(i: int) -> None:
        cache = EmbeddingCache.for_encoder(encoder)  # one cache object per "process"
        results[i] = (embed_texts(encoder, texts, cache=cache, accelerator=ThreadRank(i, barrier), shard_size=8),
                      cache.last_stats)

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(r is not None for r in results), "a rank failed"
    return results


def test_ranks_split_shards_and_replace_a_corrupt_one_together(tiny, tmp_path):
    texts = make_texts(50, seed=5)
    reference = embed_texts(TextEncoder(tiny, cache_dir=tmp_path / "one"), texts, shard_size=8)
    encoder = TextEncoder(tiny, cache_dir=tmp_path / "two")
    results = _run_ranks(encoder, texts)
    assert sorted(stats.encoded_here for _, stats in results) == [24, 26]  # shards 0,2,4,6 vs 1,3,5
    for vectors, stats in results:
        assert stats.processes == 2 and stats.encoded == 50
        np.testing.assert_array_equal(vectors, reference)
    shard = sorted(EmbeddingCache.for_encoder(encoder).shards_dir.glob("*.npy"))[3]
    blob = bytearray(shard.read_bytes())
    blob[-1] ^= 0x10
    shard.write_bytes(bytes(blob))
    again = _run_ranks(encoder, texts)
    # Rank 0 finds the bad checksum and deletes the shard; rank 1 finds it bad too, or already gone.
    assert again[0][1].corrupt_shards == 1 and again[1][1].corrupt_shards in (0, 1)
    assert {stats.encoded for _, stats in again} in ({8}, {2}) and all(s.cached == 50 - s.encoded for _, s in again)
    for vectors, _ in again:
        np.testing.assert_array_equal(vectors, reference)


# A separate process that embeds texts (optionally slowly, to be killed halfway) and saves the result.
EXTRACT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from era_adapters.cache import EmbeddingCache, embed_texts
    from era_adapters.encoders import TextEncoder
    model, cache_dir, texts_file, out, delay = sys.argv[1:6]
    texts = json.loads(open(texts_file).read())
    encoder = TextEncoder(model, cache_dir=cache_dir)
    if float(delay):
        encode = encoder.encode
        def slow(texts, **kwargs):
            vectors = encode(texts, **kwargs)
            time.sleep(float(delay))
            return vectors
        encoder.encode = slow
    cache = EmbeddingCache.for_encoder(encoder)
    np.save(out, embed_texts(encoder, texts, cache=cache, shard_size=8, batch_size=4))
    print("STATS " + json.dumps(cache.last_stats.as_dict()))
    """
)


def _extract(tiny: Path, cache_dir: Path, texts_file: Path, out: Path, delay: float = 0.0, wait: bool = True):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", EXTRACT, str(tiny), str(cache_dir), str(texts_file), str(out), str(delay)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return process
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return json.loads(stdout.split("STATS ", 1)[1])


def test_killed_extraction_resumes_and_is_bit_identical(tiny, tmp_path):
    texts = make_texts(80, seed=3)  # 10 shards of 8
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(texts))
    stats = _extract(tiny, tmp_path / "straight", texts_file, tmp_path / "straight.npy")
    assert (stats["encoded"], stats["shards_written"]) == (80, 10)

    killed = _extract(tiny, tmp_path / "resumed", texts_file, tmp_path / "never.npy", delay=0.5, wait=False)
    manifests = None
    deadline = time.time() + 120
    while time.time() < deadline and killed.poll() is None:
        found = list((tmp_path / "resumed").glob("embeddings/*/manifests/*.json"))
        if len(found) >= 3:
            manifests = found
            break
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert manifests is not None, "the slow extraction never wrote 3 shards"
    done = len(list((tmp_path / "resumed").glob("embeddings/*/manifests/*.json")))
    assert 3 <= done < 10 and not (tmp_path / "never.npy").exists()

    stats = _extract(tiny, tmp_path / "resumed", texts_file, tmp_path / "resumed.npy")
    assert stats["cached"] == 8 * done and stats["encoded"] == 80 - 8 * done
    np.testing.assert_array_equal(np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "straight.npy"))


def _toy_task(folder: Path) -> Path:
    rng = random.Random(7)
    (folder / "toy").mkdir(parents=True)
    with open(folder / "toy" / "docs.jsonl", "w") as handle:
        for i in range(70):
            handle.write(json.dumps({"id": f"d{i}", "doc": " ".join(rng.choices(WORDS, k=rng.randint(2, 50)))}) + "\n")
    with open(folder / "toy" / "queries.jsonl", "w") as handle:
        for i in range(12):
            query = {"qid": f"q{i}", "query": " ".join(rng.choices(WORDS, k=4)), "instruction": "find the code",
                     "labels": [{"id": f"d{i}", "score": 1}], "split": "test"}
            handle.write(json.dumps(query) + "\n")
    return folder


def test_two_processes_write_one_cache_equal_to_one_process(tiny, tmp_path):
    data = _toy_task(tmp_path / "data")
    common = ["training/embed.py", "--model", str(tiny), "--data", str(data), "--what", "both",
              "--instructions", "both", "--shard-size", "8", "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:  # a free port: other test runs may be using accelerate's default
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    # accelerate's `--cpu --num_processes 2` starts ONE process (its simple launcher); `--multi_gpu` starts
    # two, and embed.py asks for CPU/gloo itself when no GPU is present.
    runs = {
        "one": [sys.executable, *common, "--cache-dir", str(tmp_path / "one")],
        "two": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
                *common, "--cache-dir", str(tmp_path / "two")],
    }
    summaries = {}
    for name, command in runs.items():
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        summaries[name] = json.loads(done.stdout.split("EMBED_SUMMARY ", 1)[1])
    docs_two = next(row for row in summaries["two"] if row["what"] == "docs")
    assert docs_two["processes"] == 2 and docs_two["encoded"] == 70 and 0 < docs_two["encoded_here"] < 70
    assert [row["unique"] for row in summaries["one"]] == [70, 24]  # queries with and without instruction

    from era_adapters.data import load_tasks

    task = load_tasks(data, cache_dir=tmp_path / "datasets")[0]
    texts = list(task.doc_texts) + [q.query for q in task.queries] + [f"find the code {q.query}" for q in task.queries]
    vectors = {}
    for name in runs:
        encoder = TextEncoder(tiny, cache_dir=tmp_path / name)
        cache = EmbeddingCache.for_encoder(encoder)
        assert len(cache) == 94
        vectors[name] = cache.get(texts)
    np.testing.assert_array_equal(vectors["one"], vectors["two"])


def test_a_progress_bar_shows_for_a_slow_call_of_any_size(tiny, tmp_path, capsys, monkeypatch):
    encoder = TextEncoder(tiny, cache_dir=tmp_path)
    embed_texts(encoder, make_texts(3, seed=1))  # 3 quick texts: under the delay, no bar
    assert "embed bert" not in capsys.readouterr().err
    monkeypatch.setattr(cache_module, "PROGRESS_DELAY_SECONDS", 0.0)  # as if each call took long
    embed_texts(encoder, make_texts(3, seed=2))  # 3 texts: far below the old 512-text threshold
    shown = capsys.readouterr().err
    assert "embed bert: 100%" in shown and "3/3" in shown
    embed_texts(encoder, make_texts(4, seed=3), cache=False)  # uncached calls get a bar too
    assert "4/4" in capsys.readouterr().err
    embed_texts(encoder, make_texts(3, seed=4), progress=False)
    assert "embed bert" not in capsys.readouterr().err
