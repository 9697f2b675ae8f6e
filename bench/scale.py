"""The database at GPT-2 XL scale: 48 layers × 6,400 neurons (307,200), each with 20 top and 20 random records of
64 tokens, one explanation per neuron, a study over 1,000 neurons and 50,000 ratings; file size, build time and the
latency of what people do with it.

    .venv/bin/python -m bench.scale                      # as many whole layers as --budget-s allows, up to 48
    .venv/bin/python -m bench.scale --layers 2 --budget-s 60   # a quick look

Everything goes through the project's own writers (db.write_neurons, db.insert_explanations, human_eval.create_study,
export.import_ratings), so the figures are those of the real code paths. Neuron contents are synthetic: top
excerpts drawn from a pool of 300,000 distinct 64-token excerpts (a 19.2M-token corpus), the same 20 random excerpts
for every neuron (as collection keeps them), float32 activations.

When the neurons of all 48 layers cannot be written within --budget-s on this machine, the build stops after the
last whole layer that fits, and file size and build time are extrapolated linearly to 48 layers (the per-neuron
cost is flat: every neuron adds the same rows, and the indexes are B-trees). The report says which it is.
Latencies are measured on what was built: each is an indexed lookup whose cost grows with log(rows).

Measured (median and p95 over --runs):
- neuron view: the queries the Neurons page makes for one neuron with its caches cold (after any write): summary,
  layers, simulators, the layer's neuron table, open-study blinding, the neuron's records and stats, explanations,
  scores, similarities; `get_neuron` alone next to it. Rendering adds about 100 ms on top (bench/app.py).
- search: explanation text search for a frequent word (stops at 200 hits) and a rare one (scans every explanation).
- `study create` over 1,000 neurons (two arms), the import of 50,000 ratings, and their export as csv, parquet, json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core import config, export, human_eval, raters
from core import db as dbmod
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats

MODEL = "bench-gpt2-xl-shaped"
FULL_LAYERS, PER_LAYER = 48, 6400
EXCERPT_TOKENS, TOP_K, RANDOM_K = 64, 20, 20
POOL_EXCERPTS = 300_000
WRITE_BATCH = 512
STUDY_NEURONS, RATERS = 1000, 50  # 1,000 items × 50 raters = 50,000 ratings
TARGETS = {"neuron view median ms": 300.0, "file GB": 25.0}
WORDS = (
    "the", "token", "tokens", "after", "before", "words", "numbers", "years", "dates", "names", "cities", "code",
    "python", "function", "brackets", "quotes", "plural", "verbs", "past", "tense", "negation", "legal", "medical",
    "sports", "music", "colors", "animals", "food", "weather", "money", "prices", "units", "time", "days", "months",
    "questions", "lists", "commas", "periods", "newlines", "spaces", "capitals", "acronyms", "french", "german",
)  # fmt: skip


def timed(run: Callable[[int], object], runs: int) -> list[float]:
    """Milliseconds of run(i) for i in range(runs), after one unmeasured warm-up call."""
    run(runs)
    times = []
    for i in range(runs):
        started = time.perf_counter()
        run(i)
        times.append((time.perf_counter() - started) * 1000)
    return times


def line(name: str, times: list[float], target: float | None = None) -> str:
    median, p95 = statistics.median(times), float(np.percentile(times, 95))
    verdict = "" if target is None else f"   target < {target:.0f} ms: {'met' if median < target else 'MISSED'}"
    return f"  {name:<34} median {median:9.1f} ms   p95 {p95:9.1f} ms{verdict}"


class Synthetic:
    """Deterministic synthetic neurons of GPT-2 XL's record shape."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        vocabulary = [f" {a}{b}" for a in WORDS for b in ("", "s", "ed", "ing", "er")] + [".", ",", "\n", "'s"]
        ids = self.rng.integers(0, len(vocabulary), (POOL_EXCERPTS, EXCERPT_TOKENS))
        self.pool = [tuple(vocabulary[i] for i in row) for row in ids]
        self.shared_random = self.pool[:RANDOM_K]
        # A bank of activation rows to draw from: their bytes cost the same to store whatever they hold.
        bank = np.maximum(self.rng.normal(0.0, 0.25, (4096, EXCERPT_TOKENS)), -0.17).astype(np.float32)
        bank[:, 7] += np.linspace(1.0, 8.0, len(bank), dtype=np.float32)
        self.bank = [tuple(row) for row in bank.tolist()]
        self.bank_max = bank.max(axis=1)

    def neuron(self, layer: int, index: int) -> NeuronRecord:
        picks = self.rng.choice(POOL_EXCERPTS, TOP_K, replace=False)
        rows = self.rng.integers(0, len(self.bank), TOP_K + RANDOM_K)
        top_rows = sorted(rows[:TOP_K], key=lambda r: -self.bank_max[r])
        top = tuple(ActivationRecord(self.pool[p], self.bank[r]) for p, r in zip(picks, top_rows, strict=True))
        random_records = tuple(
            ActivationRecord(tokens, self.bank[r]) for tokens, r in zip(self.shared_random, rows[TOP_K:], strict=True)
        )
        peak = float(self.bank_max[top_rows[0]])
        quantiles = {q: peak * q / 2 for q in config.QUANTILES}
        return NeuronRecord(
            MODEL, NeuronId(layer, index), top, random_records, NeuronStats(0.01, 0.06, peak, quantiles)
        )

    def explanation(self, neuron: NeuronId, fmt: str) -> dict:
        words = self.rng.choice(WORDS, 8)
        return {
            "model": MODEL,
            "layer": neuron.layer,
            "neuron": neuron.index,
            "format": fmt,
            "explainer": "openai:bench",
            "explanation": f"{fmt}: {' '.join(words)} ({neuron})",
            "input_tokens": 1200,
            "output_tokens": 20,
        }


def build(path: Path, layers: int, budget_s: float, seed: int) -> tuple[int, float, float]:
    """Write whole layers (neurons and one explanation each) until `layers` or the budget; returns (layers built,
    seconds for neurons, seconds for explanations)."""
    started = time.perf_counter()
    synthetic = Synthetic(seed)
    print(f"  excerpt pool of {POOL_EXCERPTS:,} made in {time.perf_counter() - started:.1f} s", flush=True)
    db = dbmod.connect(path)
    neuron_s = explanation_s = 0.0
    built = 0
    try:
        for layer in range(layers):
            layer_started = time.perf_counter()
            for start in range(0, PER_LAYER, WRITE_BATCH):
                batch = [synthetic.neuron(layer, i) for i in range(start, min(start + WRITE_BATCH, PER_LAYER))]
                dbmod.write_neurons(db, MODEL, batch, source="bench")
            written = time.perf_counter()
            ids = [NeuronId(layer, i) for i in range(PER_LAYER)]
            dbmod.insert_explanations(db, [synthetic.explanation(n, "summary") for n in ids])
            neuron_s += written - layer_started
            explanation_s += time.perf_counter() - written
            built += 1
            elapsed = time.perf_counter() - started
            print(f"  layer {layer}: {time.perf_counter() - layer_started:.1f} s ({elapsed:.0f} s so far)", flush=True)
            if elapsed / built * (built + 1) > budget_s and built < layers:
                print(f"  stopping after {built} layer(s): another would pass the --budget-s of {budget_s:.0f} s")
                break
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.conn.close()
    return built, neuron_s, explanation_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=FULL_LAYERS, help="layers of 6,400 neurons to build at most")
    parser.add_argument("--budget-s", type=float, default=330.0, help="seconds of building before extrapolating")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="keep the database at this path")
    args = parser.parse_args()
    # Raters are created by the ratings import; their codes are hashed at scrypt's older, 8× cheaper strength here
    # (as in the tests), since the hash is not what is measured.
    raters.SCRYPT_PARAMS = {"n": 2**14, "r": 8, "p": 1}

    total_started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=config.cache_dir()) as folder:
        path = args.keep or Path(folder) / "scale.db"
        print(f"building {path} ({args.layers} × {PER_LAYER:,} neurons at most, budget {args.budget_s:.0f} s)")
        built, neuron_s, explanation_s = build(path, args.layers, args.budget_s, args.seed)
        n_neurons = built * PER_LAYER
        size = path.stat().st_size
        db = dbmod.connect(path)
        rng = random.Random(args.seed)

        # Study over 1,000 neurons: a second explanation (another format) for each, then `study create`.
        chosen = sorted(rng.sample(range(n_neurons), STUDY_NEURONS))
        study_ids = [NeuronId(i // PER_LAYER, i % PER_LAYER) for i in chosen]
        synthetic = Synthetic(args.seed + 1)
        dbmod.insert_explanations(db, [synthetic.explanation(n, "original") for n in study_ids])
        started = time.perf_counter()
        created = human_eval.create_study(
            db, "scale study", "summary,original", [str(n) for n in study_ids], ratings_per_item=RATERS,
            seed=args.seed, model=MODEL,
        )  # fmt: skip
        create_s = time.perf_counter() - started
        items = [item["item_id"] for item in human_eval.study_items(db, "scale study")]
        # 50,000 ratings through the real import (all rows checked, one transaction), then exported.
        ratings_csv = Path(folder) / "ratings.csv"
        with ratings_csv.open("w") as out:
            out.write("item_id,rater,choice,seconds\n")
            for item_id in items:
                for rater in range(RATERS):
                    out.write(f"{item_id},rater-{rater},{rng.choice(dbmod.RATING_CHOICES)},{rng.uniform(5, 60):.1f}\n")
        started = time.perf_counter()
        imported = export.import_ratings(db, "scale study", ratings_csv, create_raters=True)
        import_s = time.perf_counter() - started
        export_s = {}
        for fmt in ("csv", "parquet", "json"):
            started = time.perf_counter()
            files = export.export_study(db, "scale study", fmt)
            export_s[fmt] = (time.perf_counter() - started, sum(map(len, files.values())))

        probe = random.Random(args.seed + 2)
        targets = [NeuronId(probe.randrange(built), probe.randrange(PER_LAYER)) for _ in range(args.runs + 1)]

        parts: dict[str, list[float]] = {}

        def neuron_view(i: int) -> None:
            neuron = targets[i]
            steps: list[tuple[str, Callable[[], object]]] = [
                ("versions", lambda: (dbmod.data_version(db), dbmod.records_version(db))),
                ("summary", lambda: dbmod.summary(db)),
                ("layers", lambda: dbmod.list_layers(db, MODEL)),
                ("simulators", lambda: dbmod.score_simulators(db)),
                ("layer table (neuron_overview, blinded)",
                 lambda: dbmod.neuron_overview(db, MODEL, neuron.layer, hide_blinded=True)),
                ("blinded neurons", lambda: dbmod.blinded_neurons(db)),
                ("get_neuron", lambda: dbmod.get_neuron(db, MODEL, neuron)),
                ("explanations", lambda: dbmod.list_explanations(db, MODEL, neuron, status="ok")),
                ("scores", lambda: dbmod.scores_for_neuron(db, MODEL, neuron)),
                ("similarities", lambda: dbmod.similarities_for_neuron(db, MODEL, neuron)),
            ]  # fmt: skip
            for name, step in steps:
                started = time.perf_counter()
                step()
                parts.setdefault(name, []).append((time.perf_counter() - started) * 1000)

        view = timed(neuron_view, args.runs)
        get = timed(lambda i: dbmod.get_neuron(db, MODEL, targets[i]), args.runs)
        frequent = timed(lambda i: dbmod.search_explanations(db, WORDS[i % len(WORDS)]), args.runs)
        rare = timed(lambda i: dbmod.search_explanations(db, f"no such words {i}"), max(5, args.runs // 4))
        db.conn.close()
        final_size = path.stat().st_size

    full = built == FULL_LAYERS
    scale = FULL_LAYERS / built
    build_s = neuron_s + explanation_s
    print(f"\nbuilt {built} of {FULL_LAYERS} layers: {n_neurons:,} neurons × ({TOP_K} top + {RANDOM_K} random) records")
    print(f"  file {size / 1e9:.2f} GB after neurons and explanations ({size / n_neurons / 1e3:.1f} kB per neuron);")
    print(
        f"  build {neuron_s:.0f} s neurons ({neuron_s / n_neurons * 1e3:.2f} ms each),"
        f" {explanation_s:.0f} s explanations"
    )
    if not full:
        print(
            f"  extrapolated to all {FULL_LAYERS * PER_LAYER:,} neurons (×{scale:.2f}):"
            f" file {size * scale / 1e9:.1f} GB, build {build_s * scale / 60:.0f} min"
        )
    projected_gb = size * (1 if full else scale) / 1e9
    print(f"  file target < {TARGETS['file GB']:.0f} GB: {'met' if projected_gb < TARGETS['file GB'] else 'MISSED'}")
    print(f"latency on {n_neurons:,} neurons ({args.runs} runs):")
    print(line("neuron view (queries, cold caches)", view, TARGETS["neuron view median ms"]))
    slowest = sorted(parts.items(), key=lambda item: -statistics.median(item[1]))[:3]
    print("    its slowest queries: " + ", ".join(f"{name} {statistics.median(t):.1f} ms" for name, t in slowest))
    print(line("get_neuron alone", get))
    print(line("search, frequent word (200 hits)", frequent))
    print(line("search, rare word (full scan)", rare))
    print(f"study create over {STUDY_NEURONS:,} neurons: {create_s:.2f} s ({created.n_items:,} items)")
    print(f"import of {imported.written:,} ratings: {import_s:.1f} s")
    for fmt, (seconds, size_bytes) in export_s.items():
        print(f"export of {imported.written:,} ratings as {fmt}: {seconds:.2f} s ({size_bytes / 1e6:.1f} MB)")
    print(f"final file {final_size / 1e9:.2f} GB; whole benchmark {time.perf_counter() - total_started:.0f} s")


if __name__ == "__main__":
    main()
