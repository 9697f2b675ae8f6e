"""Throughput of `explain` and `score` against an OpenAI-compatible server with a fixed latency per request, at
several --concurrency settings: requests overlap, so throughput grows with concurrency until the server saturates.

    .venv/bin/python -m bench.llm                       # 200 ms per request; concurrency 1, 4 and 32
    .venv/bin/python -m bench.llm --latency-ms 500 --concurrency 1,8,64

The server is the tests' fake (tests/fake_openai.py), a real HTTP server speaking the OpenAI protocol, run in a
process of its own so that it does not share the client's interpreter lock; each request sleeps --latency-ms in its
own server thread, as a busy vLLM would take that long per request. The client is the project's own code path:
core.explain.explain_neurons (chat completions through core.llm.OpenAIBackend) and core.pipeline.score_explanations
(the completions_echo simulator: one /completions request per record of the valid split), on synthetic neurons.
Requests per second count the server's requests over the wall clock of the call. A rerun of the same explain job
shows what the database does for a crashed job: stored explanations are skipped and answers already received are
served from the LLM cache, so the rerun sends no request.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import re
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from core import config
from core import db as dbmod
from core.explain import ExplainOptions, explain_neurons
from core.llm import ApiOptions
from core.pipeline import score_explanations
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from core.simulate import SimulatorOptions

MODEL = "bench-llm"
KEY = "sk-bench-local"


def echo_completions(request: dict[str, Any]) -> dict[str, Any]:
    """A /completions answer with `echo` and `logprobs` as vLLM gives it for a tokenizer that keeps tabs apart:
    the prompt in pieces split at tabs and new lines, each with uniform top logprobs over the values 0..10."""
    pieces = re.findall(r"[^\t\n]+|\t|\n", request["prompt"])
    uniform = {str(value): math.log(1 / 11) for value in range(11)}
    logprobs = {
        "tokens": pieces,
        "token_logprobs": [None] + [-1.0] * (len(pieces) - 1),
        "top_logprobs": [None] + [uniform] * (len(pieces) - 1),
    }
    choice = {"index": 0, "text": request["prompt"], "finish_reason": "length", "logprobs": logprobs}
    return {
        "id": "cmpl-bench",
        "object": "text_completion",
        "created": 0,
        "model": request["model"],
        "choices": [choice],
    }


def serve(latency_s: float, commands: Connection) -> None:
    """The fake server with injected latency, in this process until told to stop; answers request counts."""
    from tests.fake_openai import FakeOpenAIServer, default_chat_reply, with_latency

    with FakeOpenAIServer() as server:
        server.chat_handler = with_latency(default_chat_reply, latency_s)
        server.completions_handler = with_latency(echo_completions, latency_s)
        commands.send(server.base_url)
        while (command := commands.recv()) != "stop":
            commands.send(len(server.calls) if command == "count" else None)


class Server:
    def __init__(self, latency_s: float) -> None:
        self.pipe, child = multiprocessing.get_context("spawn").Pipe()
        self.process = multiprocessing.get_context("spawn").Process(target=serve, args=(latency_s, child), daemon=True)
        self.process.start()
        self.base_url = self.pipe.recv()

    def requests(self) -> int:
        self.pipe.send("count")
        return self.pipe.recv()

    def stop(self) -> None:
        self.pipe.send("stop")
        self.process.join(timeout=10)


def synthetic_neurons(count: int, seed: int) -> list[NeuronRecord]:
    rng = np.random.default_rng(seed)
    words = [f" w{i}" for i in range(400)] + [" the", " of", ".", ","]
    neurons = []
    for index in range(count):
        values = np.maximum(rng.normal(0, 0.3, (40, 64)), 0).round(2)
        values[:20, 3] += np.linspace(6, 2, 20)
        records = [ActivationRecord(tuple(rng.choice(words, 64)), tuple(row)) for row in values.tolist()]
        stats = NeuronStats(0.1, 0.2, float(values.max()), {q: 1.0 for q in config.QUANTILES})
        neurons.append(NeuronRecord(MODEL, NeuronId(0, index), tuple(records[:20]), tuple(records[20:]), stats))
    return neurons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", default="1,4,32", help="comma-separated settings to measure")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of requests per measure, at the ideal rate")
    args = parser.parse_args()
    settings = [int(c) for c in args.concurrency.split(",")]
    latency_s = args.latency_ms / 1000
    server = Server(latency_s)
    print(f"fake OpenAI server at {server.base_url}, {args.latency_ms:.0f} ms per request")
    try:
        with tempfile.TemporaryDirectory() as folder:
            db = dbmod.connect(Path(folder) / "llm.db")
            ideal = {c: c / latency_s for c in settings}
            neurons = synthetic_neurons(int(max(ideal.values()) * args.seconds), seed=0)
            dbmod.write_neurons(db, MODEL, neurons, source="bench")
            warm_up = ExplainOptions(api=ApiOptions(base_url=server.base_url, api_key=KEY))  # imports, client, prompts
            explain_neurons(db, MODEL, [neurons[0].neuron], ["summary"], "openai:warm-up", warm_up)
            for concurrency in settings:
                count = max(8, int(ideal[concurrency] * args.seconds))
                ids = [n.neuron for n in neurons[:count]]
                explainer = f"openai:fake-c{concurrency}"  # its own cache keys and job keys
                api = ApiOptions(base_url=server.base_url, api_key=KEY, concurrency=concurrency)
                options = ExplainOptions(api=api)
                before, started = server.requests(), time.perf_counter()
                report = explain_neurons(db, MODEL, ids, ["summary"], explainer, options)  # as the CLI calls it
                seconds, sent = time.perf_counter() - started, server.requests() - before
                print(
                    f"explain  concurrency {concurrency:>3}: {sent:>4} requests in {seconds:5.2f} s ="
                    f" {sent / seconds:6.1f} requests/s (ideal {ideal[concurrency]:.0f}); {report.ok} ok"
                )
                if concurrency == max(settings):
                    before, started = server.requests(), time.perf_counter()
                    rerun = explain_neurons(db, MODEL, ids, ["summary"], explainer, options)
                    print(
                        f"explain  rerun of that job: {server.requests() - before} requests,"
                        f" {time.perf_counter() - started:.2f} s ({rerun.skipped} of {rerun.total} already stored)"
                    )
                scored_ids = ids[: max(2, count // 10)]  # 10 records (the valid split) per explanation
                before, started = server.requests(), time.perf_counter()
                scored = score_explanations(
                    db,
                    MODEL,
                    "openai:fake-sim",
                    method="completions_echo",
                    neurons=scored_ids,
                    explainers=[explainer],
                    reference="none",
                    simulator_options=SimulatorOptions(api=api),
                )
                seconds, sent = time.perf_counter() - started, server.requests() - before
                print(
                    f"score    concurrency {concurrency:>3}: {sent:>4} requests in {seconds:5.2f} s ="
                    f" {sent / seconds:6.1f} requests/s ({scored.ok} of {scored.total} explanations scored ok)"
                )
            db.conn.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
